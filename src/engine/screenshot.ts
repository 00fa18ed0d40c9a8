import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import { brightnessVariance, decodePng, Screen } from './hypervisor/screen.ts';
import { runStateOf } from './status.ts';
import { volumeLayout } from './volumes/index.ts';

/** A screenshot of one VM and how much it shows. */
export interface Screenshot {
  vm: string;
  png: Buffer;
  width: number;
  height: number;
  /** Brightness variance of the pixels (0: one colour; see BLANK_VARIANCE). */
  variance: number;
}

/**
 * Takes a screenshot of the VM `vm` of the Engine whose data directory is `dataDir`, through
 * the VM's screen monitor: works whether or not `engine run` runs (it holds the other monitor).
 * @throws BulkheadError ERR_NOT_FOUND when the VM does not run, ERR_IN_USE when another screen
 * tool is using its screen.
 */
export async function takeScreenshot(
  dataDir: string,
  vm: string,
  options: { timeoutMs?: number } = {},
): Promise<Screenshot> {
  const { runDir } = volumeLayout(dataDir, vm);
  if ((await runStateOf(runDir)) !== 'running') {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `VM ${vm} is not running, so it has no screen`, {
      hint: 'see `bulkhead engine status` for the VMs of this PC',
    });
  }
  const screen = await Screen.open(runDir, options);
  try {
    const png = await screen.screenshot();
    const image = decodePng(png);
    return {
      vm,
      png,
      width: image.width,
      height: image.height,
      variance: brightnessVariance(image),
    };
  } finally {
    screen.close();
  }
}
