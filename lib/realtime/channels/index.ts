/** The channels every gateway serves (mixins/realtime-gateway.mixin.ts), in the order the root namespace names them. */
import type { ChannelDefinition } from "../channel";
import { AGENTS } from "./agents";
import { CITY_ROOMS } from "./city-rooms";
import { PRESENCE } from "./presence";

export const REALTIME_CHANNELS: ChannelDefinition[] = [PRESENCE, CITY_ROOMS, AGENTS];
