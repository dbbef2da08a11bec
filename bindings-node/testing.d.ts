// `tasker/testing`: a harness on a temporary SQLite database with a manual clock.
import type { Tasker, Worker } from './index';

export interface NextReadyAt {
  next_ready_at: string | null;
  in_ms: number | null;
  now: string;
  clock: 'system' | 'manual';
}

export interface RunCounts {
  completed: number;
  failed: number;
  lost: number;
  released: number;
}

export class Harness {
  /** The handle to use in the test. */
  readonly tasker: Tasker;
  /** The engine's time (RFC 3339). */
  now(): Promise<string>;
  /** Moves the clock forward by `seconds`; resolves with the new time. */
  advance(seconds: number): Promise<string>;
  /** When the next step (of `handlers`) becomes claimable. */
  nextReadyAt(handlers?: string[]): Promise<NextReadyAt>;
  /** Runs the workers until idle, moving the clock to each retry or delay, until nothing is left. */
  runUntilIdle(...workers: Worker[]): Promise<RunCounts>;
  /** Closes the handle and removes the temporary database. */
  close(): Promise<void>;
}

/** Opens a harness (settings laid over; `clock` is always `manual`). */
export function openHarness(settings?: Record<string, unknown>): Promise<Harness>;
