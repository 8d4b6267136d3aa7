/**
 * A city room's id: the one rule city (its actions), presence (room filters) and the socket gateway
 * (namespace names, `watch`) share, so presence need not import city's service file to validate one.
 */
export const ROOM_ID_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** fastest-validator schema of a room id. */
export const ROOM_ID = { type: "string", pattern: ROOM_ID_PATTERN, messages: { stringPattern: "room id: lowercase letters, digits, - and _, up to 63" } } as const;

/** A user id as tokens carry it (`sub`), for params naming another user. */
export const USER_ID = { type: "string", min: 1, max: 200 } as const;
