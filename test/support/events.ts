import type { DeviceEvent, DeviceEventType, NewEvent } from '../../src/protocol/index.ts';

/*
 * Valid device events of every type for tests that do not care about the payload, each
 * carrying a tag the test reads back with `tagOf` (the version id of an update event, the
 * state of a vm-state event, the command id of a command result, the code of a refusal).
 */

const volume = (versionId: string) => ({
  role: 'system' as const,
  image: 'os',
  imageId: 'image-os',
  version: versionId,
  versionId,
  isNew: true,
});

const update = (tag: string) => ({
  profileId: 'profile-work',
  image: 'os',
  version: tag,
  versionId: tag,
  volumes: [volume(tag)],
});

/** A valid event of `type` tagged `tag`. */
export function sampleEvent(type: DeviceEventType, tag: string, extra: Partial<NewEvent> = {}) {
  const of = (): NewEvent => {
    switch (type) {
      case 'download-progress':
        return { type, data: { ...update(tag), doneBytes: 1, totalBytes: 2 } };
      case 'staged':
        return { type, data: { ...update(tag), downloadedBytes: 1, reusedBytes: 0 } };
      case 'switched':
        return { type, data: { ...update(tag), fromVersionId: null } };
      case 'healthy':
        return { type, data: update(tag) };
      case 'rolled-back':
        return { type, data: { ...update(tag), reason: 'unhealthy', runningVersionId: null } };
      case 'failed':
        return { type, data: { ...update(tag), reason: 'failed' } };
      case 'vm-state':
        return { type, data: { vm: 'work', profileId: null, state: tag } };
      case 'lease-expired':
        return { type, data: { vm: tag, profileId: null, expiresAt: 1, wasRunning: true } };
      case 'command-result':
        return { type, data: { commandId: tag, kind: 'lock', ok: true, message: 'done' } };
      case 'desired-state-refused':
        return { type, data: { code: tag, message: 'refused' } };
    }
  };
  return { ...of(), ...extra } as NewEvent;
}

/** The tag `sampleEvent` gave an event. */
export function tagOf(e: DeviceEvent): string {
  switch (e.type) {
    case 'vm-state':
      return e.data.state;
    case 'lease-expired':
      return e.data.vm;
    case 'command-result':
      return e.data.commandId;
    case 'desired-state-refused':
      return e.data.code;
    default:
      return e.data.versionId;
  }
}

/** The fields of an update event a Center test chooses; the rest is filled in validly. */
export interface UpdateFields {
  /** The system version the event is about (brought by the transaction unless `volumes`). */
  versionId: string;
  profileId?: string;
  reason?: string;
  /** Every volume of the release; by default the system volume `versionId`, new. */
  volumes?: { role: 'system' | 'app'; versionId: string; imageId?: string; isNew: boolean }[];
}

/** An update event of `type` about the release `fields` describes, ready for the wire. */
export function updateEvent(
  type: 'download-progress' | 'staged' | 'switched' | 'healthy' | 'rolled-back' | 'failed',
  fields: UpdateFields,
): NewEvent {
  const volumes = (
    fields.volumes ?? [{ role: 'system', versionId: fields.versionId, isNew: true }]
  ).map((v) => ({
    role: v.role,
    image: v.role === 'system' ? 'os' : 'app',
    imageId: v.imageId ?? `image-${v.role}`,
    version: v.versionId,
    versionId: v.versionId,
    isNew: v.isNew,
  }));
  const base = {
    profileId: fields.profileId ?? 'profile-work',
    image: 'os',
    version: fields.versionId,
    versionId: fields.versionId,
    volumes,
  };
  const reason = fields.reason ?? type;
  switch (type) {
    case 'download-progress':
      return { type, data: { ...base, doneBytes: 1, totalBytes: 2 } };
    case 'staged':
      return { type, data: { ...base, downloadedBytes: 1, reusedBytes: 0 } };
    case 'switched':
      return { type, data: { ...base, fromVersionId: null } };
    case 'healthy':
      return { type, data: base };
    case 'rolled-back':
      return { type, data: { ...base, reason, runningVersionId: null } };
    case 'failed':
      return { type, data: { ...base, reason } };
  }
}
