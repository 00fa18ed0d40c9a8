import RFB from '@novnc/novnc';
import { useEffect, useRef, useState, type RefObject } from 'react';
import { displayUrl } from './api.ts';

/** X keysyms of the modifiers the switching shortcut holds down (X11 keysymdef.h). */
const XK_CONTROL_L = 0xffe3;
const XK_ALT_L = 0xffe9;
/** How long after a lost display the page tries again (a VM restarting for its update). */
const RETRY_MS = 2000;

/**
 * Lets go of Ctrl and Alt in the VM being left: it saw them pressed for the shortcut that
 * switches away, and would otherwise keep them down.
 */
export function releaseShortcutKeys(rfb: RFB | null): void {
  rfb?.sendKey(XK_CONTROL_L, 'ControlLeft', false);
  rfb?.sendKey(XK_ALT_L, 'AltLeft', false);
}

/**
 * One VM's screen through noVNC, filling its box. Only the VM shown has a connection: leaving
 * it (another VM, the overview) disconnects it, so keyboard and mouse reach no other VM.
 */
export function Screen({ vm, rfbRef }: { vm: string; rfbRef: RefObject<RFB | null> }) {
  const box = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<'connecting' | 'connected' | 'lost'>('connecting');
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const target = box.current;
    if (!target) return;
    let retry: ReturnType<typeof setTimeout> | undefined;
    // noVNC complains about disconnecting a connection that already ended.
    let ended = false;
    setState('connecting');
    const rfb = new RFB(target, displayUrl(vm), { shared: true });
    rfb.scaleViewport = true;
    rfb.focusOnClick = true;
    rfb.background = '#000';
    rfb.addEventListener('connect', () => {
      setState('connected');
      rfb.focus();
    });
    rfb.addEventListener('disconnect', () => {
      ended = true;
      setState('lost');
      retry = setTimeout(() => setAttempt((n) => n + 1), RETRY_MS);
    });
    rfbRef.current = rfb;
    return () => {
      clearTimeout(retry);
      if (!ended) {
        releaseShortcutKeys(rfb);
        rfb.disconnect();
      }
      if (rfbRef.current === rfb) rfbRef.current = null;
    };
  }, [vm, attempt, rfbRef]);

  return (
    <div className="screen-area">
      {state !== 'connected' && (
        <p className="screen-note" role="status">
          {state === 'connecting'
            ? `Connecting to the screen of ${vm}…`
            : `The screen of ${vm} is not available right now (it may be off or restarting). Trying again…`}
        </p>
      )}
      <div
        ref={box}
        className="screen"
        data-vm={vm}
        data-state={state}
        aria-label={`Screen of ${vm}: keyboard and mouse go to ${vm}`}
        role="application"
      />
    </div>
  );
}
