/**
 * What a client may send on each socket.io namespace, and in what shape: one fastest-validator schema
 * per event, as an action declares `params`, taken from the channel tables (lib/realtime/channels/). The
 * gateway refuses any other event name (404), and a payload that does not match (422, naming the field)
 * before it authorizes or calls anything; tests generate their bad-input cases from this table.
 */
import { REALTIME_CHANNELS } from "./channels";

export const SOCKET_EVENTS: Record<string, Record<string, Record<string, unknown>>> = Object.fromEntries(
	REALTIME_CHANNELS.map(channel => [channel.name, Object.fromEntries(Object.entries(channel.events).map(([event, spec]) => [event, spec.params]))]),
);
