import { describe, expect, it } from 'vitest';
import { ByteBudget } from '../../src/nbd/byte-budget.js';

describe('NBD byte budget', () => {
  it('takes what fits, always one request when nothing is held, and grants waiters in order', () => {
    const b = new ByteBudget(100);
    expect(b.tryTake(60)).toBe(true);
    expect(b.tryTake(50)).toBe(false);
    const granted: string[] = [];
    b.wait(50, () => granted.push('a'));
    b.wait(10, () => granted.push('b'));
    // A small request does not overtake one that waits.
    expect(b.tryTake(10)).toBe(false);
    b.give(60);
    expect(granted).toEqual(['a', 'b']);
    expect(b.usedBytes).toBe(60);
    b.give(60);
    expect(b.tryTake(500)).toBe(true);
    expect(b.usedBytes).toBe(500);
    b.give(500);
    expect(b.usedBytes).toBe(0);
  });

  it('never grants a cancelled waiter, and cancelling the head lets the next in', () => {
    const b = new ByteBudget(100);
    expect(b.tryTake(80)).toBe(true);
    const granted: string[] = [];
    const cancelA = b.wait(90, () => granted.push('a'));
    b.wait(20, () => granted.push('b'));
    cancelA();
    expect(granted).toEqual(['b']);
    b.give(100);
    expect(granted).toEqual(['b']);
    expect(b.usedBytes).toBe(0);
  });

  it('refuses to get back more than it gave', () => {
    const b = new ByteBudget(10);
    expect(() => b.give(1)).toThrow();
  });
});
