import { sql, type Kysely } from 'kysely';
import { Gauge, type Registry } from 'prom-client';
import { DEVICE_STATES, ROLLOUT_STATES, type Database } from '../db/index.ts';

/**
 * Registers `bulkhead_center_devices{state}`: devices by state, counted at each scrape with one
 * `group by state` (an index-only scan of devices_state_contact); and
 * `bulkhead_center_rollouts{state}`: rollouts by state, so an alert can fire on `halted`.
 * Idempotent per registry.
 */
export function registerFleetMetrics(registry: Registry, db: Kysely<Database>): void {
  if (registry.getSingleMetric('bulkhead_center_devices') !== undefined) return;
  new Gauge({
    name: 'bulkhead_center_devices',
    help: 'Enrolled devices, by management state.',
    labelNames: ['state'],
    registers: [registry],
    async collect() {
      const rows = await db
        .selectFrom('devices')
        .select(['state', sql<number>`count(*)`.as('n')])
        .groupBy('state')
        .execute();
      for (const state of DEVICE_STATES) {
        this.set({ state }, Number(rows.find((r) => r.state === state)?.n ?? 0));
      }
    },
  });
  new Gauge({
    name: 'bulkhead_center_rollouts',
    help: 'Rollouts, by state (halted ones stopped themselves on failures).',
    labelNames: ['state'],
    registers: [registry],
    async collect() {
      const rows = await db
        .selectFrom('rollouts')
        .select(['state', sql<number>`count(*)`.as('n')])
        .groupBy('state')
        .execute();
      for (const state of ROLLOUT_STATES) {
        this.set({ state }, Number(rows.find((r) => r.state === state)?.n ?? 0));
      }
    },
  });
}
