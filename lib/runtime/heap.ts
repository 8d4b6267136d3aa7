import v8 from "v8";

export interface HeapReading {
	/** process.memoryUsage().heapUsed */
	heapUsed: number;
	/** The part of heapUsed that is compiled code (V8's code spaces). */
	codeBytes: number;
	afterGc: boolean;
}

const CODE_SPACES = new Set(["code_space", "code_large_object_space"]);

/**
 * The heap in use, after a full GC when node runs with --expose-gc. Code is reported apart because it
 * grows with what the process has executed so far (first requests, background timers getting hot),
 * not with the objects it holds: a per-connection memory figure should not count it.
 */
export function readHeap(): HeapReading {
	const gc = (globalThis as { gc?: () => void }).gc;
	gc?.();
	const codeBytes = v8
		.getHeapSpaceStatistics()
		.filter(space => CODE_SPACES.has(space.space_name))
		.reduce((sum, space) => sum + space.space_used_size, 0);
	return { heapUsed: process.memoryUsage().heapUsed, codeBytes, afterGc: !!gc };
}
