// Copies the non-TypeScript assets the compiled package needs next to its JavaScript:
// the numbered SQL migrations and the worker-thread bootstrap.
import { cpSync, readdirSync } from 'node:fs';

for (const file of readdirSync('migrations').filter((f) => f.endsWith('.sql'))) {
  cpSync(`migrations/${file}`, `dist/migrations/${file}`);
}
cpSync('threads/bootstrap.mjs', 'dist/threads/bootstrap.mjs');
