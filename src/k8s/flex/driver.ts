/**
 * torusd's answer to one forwarded driver call. The same dispatch as the
 * driver executables (native/flex/torus-flex.c and `torusblk flex`), so a
 * call reaches the same answer whichever way it came.
 */
import { TorusError } from '../../errors/torus-error.js';
import type { FlexMounter } from './mounter.js';
import { parseMountRequest, parseTargetDir } from './options.js';
import { failure, initResult, notSupported, type FlexResult } from './protocol.js';

export type FlexHandler = (argv: readonly string[]) => Promise<FlexResult>;

function arity(call: string, argv: readonly string[], n: number): void {
  if (argv.length !== n + 1) {
    throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', `${call} takes ${n} argument${n === 1 ? '' : 's'}, got ${argv.length - 1}`);
  }
}

export function flexHandler(mounter: Pick<FlexMounter, 'mount' | 'unmount'>): FlexHandler {
  return async (argv) => {
    const call = argv[0] ?? '';
    try {
      switch (call) {
        case 'init':
          return initResult();
        case 'mount': {
          arity('mount', argv, 2);
          await mounter.mount(parseMountRequest(argv[1], argv[2]));
          return { status: 'Success' };
        }
        case 'unmount': {
          arity('unmount', argv, 1);
          await mounter.unmount(parseTargetDir(argv[1]));
          return { status: 'Success' };
        }
        default:
          return notSupported(call);
      }
    } catch (err) {
      return failure(err);
    }
  };
}
