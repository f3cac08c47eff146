import type { NodeFactory, VolumeIo } from './node-under-test.js';
import { realNode } from './real-node.js';

/**
 * Deliberately broken builds of the peer, each a small wrapper or injected
 * policy around the real code: the suite proves the checkers catch every
 * one of them within the CI seed budget.
 */
export type VariantName = 'ack-early';

export interface Variant {
  readonly name: VariantName;
  readonly what: string;
  readonly factory: NodeFactory;
  readonly wrapIo?: (io: VolumeIo) => VolumeIo;
}

export const VARIANTS: Record<VariantName, Variant> = {
  'ack-early': {
    name: 'ack-early',
    what: 'acknowledge a write before the replicas have it',
    factory: realNode,
  },
};

export function variantNames(): VariantName[] {
  return Object.keys(VARIANTS) as VariantName[];
}
