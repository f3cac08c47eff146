// Does every block of a volume have exactly R equal copies, on the peers the
// ring names for it and nowhere else (docs/replication.md, guarantee 5)?
//
// Two independent checks over the copies each peer lists (GET /v1/blocks):
// - by count: every block that has a copy has exactly R, all equal (state,
//   version, digest), none suspect;
// - by placement: the holders are exactly ownersOf(ring, ref).now, computed
//   with torus's own placement code (dist/src/replication/owners.js).
// The first needs nothing from torus's code, so a bug in placement shared
// by torusd and this checker cannot hide a missing copy.

/** Problems listed in full at most; the rest are counted. */
const PROBLEMS_LISTED_MAX = 20;

/**
 * volume: { id, generation, blocks }; expectFull: every block index
 * 0..blocks-1 must have copies (it was written). copiesByPeer: uuid ->
 * [{ index, generation, state, version, digest, suspect }]. ownersOf(ring,
 * ref) -> { now } or null to skip the placement check.
 */
export function checkCopies({ volume, ring, copiesByPeer, replication, expectFull, ownersOf }) {
  const problems = [];
  const note = (p) => {
    problems.push(p);
  };
  if (ring && ring.transition !== null) note(`the ring is not stable (phase ${ring.transition.phase})`);

  const byIndex = new Map();
  for (const [peer, copies] of Object.entries(copiesByPeer)) {
    for (const c of copies) {
      if (c.generation !== volume.generation || c.state === 'absent') continue;
      if (c.index < 0 || c.index >= volume.blocks) {
        note(`${peer} lists block ${c.index}, outside the volume (${volume.blocks} blocks)`);
        continue;
      }
      let list = byIndex.get(c.index);
      if (!list) byIndex.set(c.index, (list = []));
      list.push({ peer, ...c });
    }
  }

  const histogram = {};
  let short = 0;
  let over = 0;
  let unequal = 0;
  let suspect = 0;
  let misplaced = 0;
  let holes = 0;
  for (let index = 0; index < volume.blocks; index++) {
    const list = byIndex.get(index) ?? [];
    histogram[list.length] = (histogram[list.length] ?? 0) + 1;
    if (list.length === 0) {
      if (expectFull) {
        holes++;
        note(`block ${index}: no copy anywhere (it was written)`);
      }
      continue;
    }
    if (list.length < replication) {
      short++;
      note(`block ${index}: ${list.length} cop${list.length === 1 ? 'y' : 'ies'} (on ${list.map((c) => short8(c.peer)).join(', ')}), want ${replication}`);
    } else if (list.length > replication) {
      over++;
      note(`block ${index}: ${list.length} copies (on ${list.map((c) => short8(c.peer)).join(', ')}), want ${replication}`);
    }
    const first = list[0];
    if (list.some((c) => c.state !== first.state || c.version !== first.version || c.digest !== first.digest)) {
      unequal++;
      note(`block ${index}: copies differ: ${list.map((c) => `${short8(c.peer)} ${c.state} v${c.version} digest ${c.digest}`).join('; ')}`);
    }
    const bad = list.filter((c) => c.suspect);
    if (bad.length > 0) {
      suspect++;
      note(`block ${index}: suspect cop${bad.length === 1 ? 'y' : 'ies'} on ${bad.map((c) => short8(c.peer)).join(', ')}`);
    }
    if (ownersOf && ring) {
      const want = ownersOf(ring, { volumeId: volume.id, generation: volume.generation, index }).now;
      const have = list.map((c) => c.peer);
      const missing = want.filter((u) => !have.includes(u));
      const extra = have.filter((u) => !want.includes(u));
      if (missing.length > 0 || extra.length > 0) {
        misplaced++;
        note(
          `block ${index}: owners ${want.map(short8).join(', ')}` +
            (missing.length ? `; missing on ${missing.map(short8).join(', ')}` : '') +
            (extra.length ? `; extra copy on ${extra.map(short8).join(', ')}` : ''),
        );
      }
    }
  }
  return {
    ok: problems.length === 0,
    volumeId: volume.id,
    blocks: volume.blocks,
    blocksWithCopies: byIndex.size,
    /** number of copies -> number of blocks */
    histogram,
    short,
    over,
    unequal,
    suspect,
    misplaced,
    holes,
    placementChecked: Boolean(ownersOf && ring),
    problemCount: problems.length,
    problems: problems.slice(0, PROBLEMS_LISTED_MAX),
  };
}

function short8(uuid) {
  return String(uuid).slice(0, 8);
}

/** One line for the console. */
export function describeCheck(name, r) {
  const hist = Object.entries(r.histogram)
    .map(([copies, n]) => `${n} with ${copies} cop${copies === '1' ? 'y' : 'ies'}`)
    .join(', ');
  if (r.ok) return `${name}: OK: ${r.blocks} blocks, ${hist}${r.placementChecked ? ', on their ring owners' : ''}, copies equal`;
  return `${name}: FAILED: ${r.problemCount} problem(s) (blocks: ${hist}; short ${r.short}, over ${r.over}, unequal ${r.unequal}, suspect ${r.suspect}, misplaced ${r.misplaced}, missing ${r.holes})`;
}
