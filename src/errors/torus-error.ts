import { ERROR_CODES, type ErrorCode } from './codes.js';

/** The one error type torus code throws for expected failures. */
export class TorusError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TorusError';
    this.code = code;
    this.details = options?.details;
  }

  /** One line for humans: `TORUS_ERR_X: message`. */
  toLine(): string {
    return `${this.code}: ${this.message}`;
  }
}

export function isTorusError(err: unknown, code?: ErrorCode): err is TorusError {
  return err instanceof TorusError && (code === undefined || err.code === code);
}

export function describeCode(code: ErrorCode): string {
  return ERROR_CODES[code];
}
