import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BULKHEAD_VERSION, InventorySchema } from '../protocol/index.ts';
import { gatherInventory } from './identity.ts';

test('the inventory an Engine enrols with names its version', async () => {
  const inventory = await gatherInventory();
  assert.equal(inventory.engineVersion, BULKHEAD_VERSION);
  assert.ok(InventorySchema.safeParse(inventory).success);
});
