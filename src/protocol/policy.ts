import { z } from 'zod';
import { text } from './text.ts';

/*
 * What a VM profile says about one VM on a PC: how it is isolated, how Engine decides that a
 * freshly switched version is healthy, and what it may use. Center stores these with the
 * profile and copies them into each device's signed desired state; Engine enforces them.
 */

/** A host (name or address) and port the work VM may reach when its network is restricted. */
export const NetworkEndpointSchema = z.strictObject({
  host: z
    .string()
    .min(1)
    .max(253)
    .regex(/^[A-Za-z0-9.:-]+$/, 'a host name or an IP address'),
  port: z.number().int().min(1).max(65535),
});
export type NetworkEndpoint = z.infer<typeof NetworkEndpointSchema>;

/**
 * Isolation of one VM (DESIGN §4). Every VM gets its own virtual network; `nat` is ordinary
 * outbound access, `restricted` allows only `allowedEndpoints` (the corporate VPN gateway,
 * say), `none` gives the VM no network at all.
 */
export const IsolationPolicySchema = z.strictObject({
  network: z.enum(['nat', 'restricted', 'none']).default('nat'),
  /** Reachable endpoints when `network` is `restricted`; ignored otherwise. */
  allowedEndpoints: z.array(NetworkEndpointSchema).max(64).default([]),
  /** Whether a clipboard channel to the user's other VMs exists. Off unless allowed. */
  clipboard: z.boolean().default(false),
  /** USB devices (`vendor:product`, hex) assigned to this VM; none by default. */
  usbDevices: z
    .array(z.string().regex(/^[0-9a-f]{4}:[0-9a-f]{4}$/, 'vendor:product in hex, e.g. 046d:c52b'))
    .max(32)
    .default([]),
  /** Whether the VM's data volume is encrypted (LUKS, key escrowed at Center). */
  encryptData: z.boolean().default(false),
  /**
   * Whether the VM runs only on a PC whose Engine seals its keys with a TPM (docs/keys.md); a
   * PC without one refuses it with ERR_TPM_REQUIRED and runs its other VMs.
   */
  requireTpm: z.boolean().default(false),
});
export type IsolationPolicy = z.infer<typeof IsolationPolicySchema>;

/**
 * When a switched VM counts as healthy (DESIGN §3): the guest agent answers within
 * `timeoutSeconds` of the VM starting, `command`, if given, run through the guest agent,
 * exits 0 within the same time, and with `screen` the VM's screen is not blank by then.
 */
export const HealthCheckSchema = z.strictObject({
  timeoutSeconds: z.number().int().min(5).max(3600).default(120),
  /** argv of the check, run in the guest (`["/usr/libexec/health-check"]`); no shell. */
  command: z
    .array(text({ min: 1, max: 1024 }))
    .min(1)
    .max(64)
    .optional(),
  /**
   * Whether the VM's screen must show something (not one colour) within the same time: a VM
   * stuck at a black screen is unhealthy even if its agent answers. Absent: not checked.
   */
  screen: z.boolean().optional(),
});
export type HealthCheck = z.infer<typeof HealthCheckSchema>;

/** When a VM's system-volume overlay is discarded: at each update, or at every boot as well. */
export const ResetPolicySchema = z.enum(['on-update', 'on-boot']);
export type ResetPolicyName = z.infer<typeof ResetPolicySchema>;

/** CPU and memory of one VM. */
export const VmResourcesSchema = z.strictObject({
  cpus: z.number().int().min(1).max(64),
  memoryMib: z
    .number()
    .int()
    .min(64)
    .max(1024 * 1024),
});
export type VmResources = z.infer<typeof VmResourcesSchema>;

/**
 * The virtual machine a profile's VM is (issue 12): its firmware, whether it has Secure Boot
 * (UEFI only) and a TPM 2.0, and a hint of the guest OS with the device set it has drivers for
 * (`virtio`: paravirtual; `compat`: AHCI disks, an e1000 NIC, a USB tablet). The defaults are
 * what every VM was before: BIOS, no TPM, Linux on virtio.
 */
export const VmMachineSchema = z
  .strictObject({
    firmware: z.enum(['bios', 'uefi']).default('bios'),
    secureBoot: z.boolean().default(false),
    tpm: z.boolean().default(false),
    os: z.enum(['linux', 'windows']).default('linux'),
    devices: z.enum(['virtio', 'compat']).default('virtio'),
  })
  .refine((m) => !m.secureBoot || m.firmware === 'uefi', {
    message: 'Secure Boot needs firmware uefi: set firmware to uefi, or turn secureBoot off',
    path: ['secureBoot'],
  });
export type VmMachineHint = z.infer<typeof VmMachineSchema>;

/** The machine every VM had before profiles could choose one. */
export const DEFAULT_VM_MACHINE: VmMachineHint = {
  firmware: 'bios',
  secureBoot: false,
  tpm: false,
  os: 'linux',
  devices: 'virtio',
};
