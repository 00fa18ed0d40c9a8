/*
 * `node relay.ts <host> <port>`: connects to host:port and relays stdin/stdout to it. QEMU's
 * user-mode network starts one per guest connection to an allowed endpoint of a restricted
 * network (guestfwd `cmd:`), so the guest reaches that endpoint and nothing else.
 */
import { connect } from 'node:net';

const [host, portText] = process.argv.slice(2);
const port = Number(portText);
if (host === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
  process.stderr.write('usage: relay.ts <host> <port>\n');
  process.exit(2);
}
const socket = connect({ host, port });
socket.on('error', () => process.exit(1));
process.stdin.pipe(socket);
socket.on('data', (data: Buffer) => process.stdout.write(data));
// stdout is the guest's connection, a socket, written asynchronously: exit only once what the
// endpoint sent has been handed over.
socket.on('close', () => process.stdout.write('', () => process.exit(0)));
