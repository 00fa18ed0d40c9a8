import { readFileSync } from 'node:fs';
import { errnoCode } from '../../protocol/index.ts';

/**
 * Whether process `pid` runs. A zombie does not: the QEMU of an Engine that was killed belongs
 * to init, and until init reaps it, its pid still answers signal 0.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'.
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}
