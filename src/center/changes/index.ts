// How Center changes state: `markChanged` moves the desired state of the devices a change
// touches, in its transaction, and `transact` tells them after commit; `runCommand` is one
// audited administrative change (transaction + change + audit entry + notification).
export { markChanged, transact, type ChangeDeps, type ChangeTarget } from './mark.ts';
export {
  applyCommand,
  runCommand,
  type CommandDeps,
  type CommandSpec,
  type Outcome,
} from './command.ts';
