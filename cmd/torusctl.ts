#!/usr/bin/env node
import { runCli } from '../src/cli/program.js';

process.exitCode = await runCli(process.argv.slice(2), {
  io: {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    stdin: process.stdin,
    env: process.env,
    now: () => Date.now(),
    stdoutIsTTY: process.stdout.isTTY === true,
  },
});
