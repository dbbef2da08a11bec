// Types of the `tasker` package. Responses are the engine's JSON: field names are
// those of docs/api.md (snake_case); method names and options are camelCase.

import { EventEmitter } from 'node:events';

/**
 * JSON data: what contexts, configs and results are made of. An integer beyond
 * `Number.MAX_SAFE_INTEGER` (2^53 - 1) is a `bigint`, so 64-bit integers stored by any
 * language arrive exactly; a `bigint` sent to the engine is written as an integer.
 */
export type Json = null | boolean | number | bigint | string | Json[] | { [key: string]: Json };

export type TaskState = 'pending' | 'running' | 'complete' | 'error' | 'cancelled';
export type StepState =
  | 'pending'
  | 'ready'
  | 'running'
  | 'waiting'
  | 'complete'
  | 'error'
  | 'cancelled'
  | 'resolved_manually';
export type EventName =
  | 'task.created'
  | 'task.started'
  | 'task.completed'
  | 'task.failed'
  | 'task.cancelled'
  | 'task.resumed'
  | 'step.created'
  | 'step.ready'
  | 'step.started'
  | 'step.completed'
  | 'step.failed'
  | 'step.retry_scheduled'
  | 'step.lease_expired'
  | 'step.released'
  | 'step.timed_out'
  | 'step.retry_requested'
  | 'step.resolved_manually'
  | 'step.cancelled'
  | 'step.waiting'
  | 'step.signalled'
  | 'step.fanned_out';
export type StopReason = 'cancelled' | 'timeout' | 'lease_lost' | 'task_timeout';
export type ErrorCode =
  | 'invalid_json'
  | 'invalid_utf8'
  | 'invalid_argument'
  | 'unknown_operation'
  | 'invalid_template'
  | 'schema_violation'
  | 'not_found'
  | 'conflict'
  | 'lease_lost'
  | 'invalid_state'
  | 'too_large'
  | 'unavailable'
  | 'database'
  | 'closed'
  | 'internal';

/** Settings for `Tasker.open` (docs/configuration.md); unknown keys are refused by the engine. */
export interface Settings {
  database_url?: string;
  templates_dir?: string;
  env?: string;
  lease_ms?: number;
  sweep_interval_ms?: number;
  claim_poll_ms?: number;
  postgres_schema?: string;
  postgres_pool_size?: number;
  sqlite_synchronous?: 'normal' | 'full' | 'off';
  [setting: string]: Json | undefined;
}

/** `register_template`: the template's key and whether the registry changed. */
export interface Registered {
  namespace: string;
  name: string;
  version: string;
  steps: number;
  registered: boolean;
  /** True when the identical template was already registered (nothing changed). */
  unchanged: boolean;
  /** Says that nothing changed, when `unchanged`. */
  note?: string;
}

/** `validate_template`. */
export interface Validated {
  valid: true;
  template: Record<string, Json>;
}

/** `create_task`: `created` is false when an existing task with the key was returned. */
export interface CreatedTask {
  task_id: number;
  created: boolean;
  state: TaskState;
}

/** One item of `createTasks`: `createTask`'s arguments as fields. */
export interface NewTask {
  namespace: string;
  name: string;
  version?: string;
  context?: Json;
  idempotencyKey?: string;
  priority?: number;
  /** A delayed task: its steps first run at this time (RFC 3339 text or a Date). Not with `delayMs`. */
  runAt?: string | Date;
  /** The same, as a delay from now. */
  delayMs?: number;
  /** The task timeout in seconds, counted from when the task is due. */
  timeoutS?: number;
}

/** The template a schedule runs (`version` null: the highest at each tick). */
export interface ScheduleTemplate {
  namespace: string;
  name: string;
  version: string | null;
}

/** A cron schedule (`createSchedule`, `getSchedule`, ...). */
export interface Schedule {
  name: string;
  template: ScheduleTemplate;
  cron: string;
  timezone: string;
  context: Json;
  catch_up: { policy: 'skip' | 'all'; limit?: number };
  paused: boolean;
  /** null while paused. */
  next_fire_at: string | null;
  last_tick_at: string | null;
  last_task_id: number | null;
  created_at: string;
  updated_at: string;
}

/** `createSchedule`'s options. */
export interface ScheduleOptions {
  /** 5 fields (minute hour day month weekday), or 6 with seconds first. */
  cron: string;
  /** An IANA time zone; default `UTC`. */
  timezone?: string;
  version?: string;
  context?: Json;
  /** Missed ticks after downtime: `skip` (default: only the latest) or `all`. */
  catchUp?: 'skip' | 'all';
  /** With `catchUp: 'all'`: the most missed ticks fired (default 100). */
  catchUpLimit?: number;
  paused?: boolean;
}

/** A task without its context and steps (`list_tasks` items). */
export interface TaskSummary {
  id: number;
  namespace: string;
  name: string;
  version: string;
  state: TaskState;
  priority: number;
  idempotency_key?: string;
  steps_total: number;
  steps_done: number;
  steps_error: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
}

/** The error document of a failed attempt. */
export interface ErrorDocument {
  message: string;
  kind?: string;
  retryable?: boolean;
  retry_after_ms?: number;
  details?: Json;
  backtrace?: string;
  [field: string]: Json | undefined;
}

/** One step of `getTask`. */
export interface StepInfo {
  id: number;
  name: string;
  handler: string;
  state: StepState;
  depends_on: string[];
  pending_parents: number;
  level: number;
  attempts: number;
  max_attempts: number;
  priority: number;
  config: Json;
  result: Json;
  error: ErrorDocument | null;
  worker: string | null;
  ready_at: string | null;
  lease_expires_at: string | null;
  /** A `waiting` step's deadline (it fails with kind `signal_timeout` or `children_timeout` then). */
  wait_until?: string;
  /** The ids of the child tasks the step started, in start order. */
  children?: number[];
  first_started_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
}

/** `getTask`: the summary fields plus the context and every step. */
export interface TaskInfo extends TaskSummary {
  context: Json;
  steps: StepInfo[];
  /** A child task's parent: the step that started it. */
  parent?: { task_id: number; step_id: number; step_name: string };
  /** A delayed task's due time. */
  run_at?: string;
  /** True while a delayed task waits for its due time. */
  delayed?: boolean;
  timeout_s?: number;
  /** When the task times out (absent once it did). */
  deadline_at?: string;
}

/** `listTasks`: pass `next_cursor` as `cursor` for the next page. */
export interface TaskPage {
  tasks: TaskSummary[];
  next_cursor: number | null;
}

/** Why one unfinished step is not done (`explainTask`). */
export interface ExplainedStep {
  name: string;
  state: StepState;
  level: number;
  status:
    | 'waiting_on_parents'
    | 'blocked'
    | 'retry_scheduled'
    | 'waiting_for_worker'
    | 'held_by_limit'
    | 'running'
    | 'waiting_for_signal'
    | 'failed'
    | 'cancelled';
  reason: string;
  waiting_on?: string[];
  blocked_by?: string[];
  /** Ready and running steps with limits (docs/scheduling.md): their use now. */
  limits?: { concurrency?: LimitUse; rate?: LimitUse };
}

/** One limit of a step: `running` of `max` (for a rate limit: starts in the last `per_ms`). */
export interface LimitUse {
  key: string;
  running: number;
  max: number;
  per_ms?: number;
  /** When a full rate window admits its next start. */
  next_free_at?: string;
}

export interface Explanation {
  task_id: number;
  state: TaskState;
  steps: ExplainedStep[];
}

/** `cancelTask`. */
export interface Cancelled {
  task_id: number;
  state: TaskState;
  changed: boolean;
}

/** `retryStep` / `resolveStep`. */
export interface StepChange {
  step_id: number;
  task_id: number;
  state: StepState;
  task_state: TaskState;
  [field: string]: Json | undefined;
}

/** `sendSignal`: every step of the task that waits for the signal, after the call. */
export interface SignalSent {
  task_id: number;
  signal: string;
  steps: { step_id: number; step_name: string; state: StepState }[];
  task_state: TaskState;
}

/** `stats`. */
export interface Stats {
  tasks: Partial<Record<TaskState, number>>;
  steps: Partial<Record<StepState, number>>;
  oldest_ready_age_ms: number;
  throughput: {
    window_ms: number;
    steps_completed: number;
    steps_failed: number;
    tasks_completed: number;
    tasks_failed: number;
    tasks_cancelled: number;
    steps_per_s: number;
    completion_rate: number | null;
    error_rate: number | null;
  };
  slowest_steps: { task_id: number; step_id: number; step_name: string; handler: string; duration_ms: number }[];
  slowest_tasks: { task_id: number; namespace: string; name: string; duration_ms: number }[];
  last_event_id: number;
}

/** One event of the durable log; `id` is the cursor. */
export interface TaskerEvent {
  id: number;
  event: EventName;
  task_id: number;
  step_id?: number;
  step_name?: string;
  from: string | null;
  to: string;
  at: string;
  attempt?: number;
  worker?: string;
  reason: string;
  details?: { [key: string]: Json };
}

/** `events`: pass `next_cursor` as `since` next time. */
export interface EventPage {
  events: TaskerEvent[];
  next_cursor: number;
}

export interface Ping {
  ok: true;
  version: string;
}

/** A step named by id or by its task and name. */
export type StepRef = number | { taskId: number; stepName: string };

/** An open handle on a Tasker database. */
export class Tasker {
  private constructor();
  /** Opens a handle: a database URL, or settings; `settings` are laid over `config`. */
  static open(config?: string | Settings, settings?: Settings): Promise<Tasker>;
  /** True once `close()` was called. */
  readonly closed: boolean;
  /** The engine's lease length in milliseconds. */
  readonly leaseMs: number;
  /** The native handle (used by `Worker`). */
  readonly native: unknown;
  /** Closes the handle and its subscriptions; later calls reject with `ClosedError`. */
  close(): Promise<void>;
  /** Runs any operation by name; resolves with its response. */
  call(op: string, request?: Record<string, Json | undefined>): Promise<any>;
  /** Runs an operation with JSON request text; resolves with the JSON response text. */
  callJson(op: string, text?: string): Promise<string>;
  ping(): Promise<Ping>;
  /** `source`: a file path (string) or the template document (object). */
  registerTemplate(source: string | Record<string, Json>, options?: { replace?: boolean }): Promise<Registered>;
  /** A template given as YAML or JSON text. */
  registerTemplateText(text: string, options?: { replace?: boolean }): Promise<Registered>;
  validateTemplate(source: string | Record<string, Json>): Promise<Validated>;
  validateTemplateText(text: string): Promise<Validated>;
  getTemplate(namespace: string, name: string, version?: string): Promise<Record<string, Json>>;
  createTask(
    namespace: string,
    name: string,
    options?: {
      version?: string;
      context?: Json;
      idempotencyKey?: string;
      priority?: number;
      runAt?: string | Date;
      delayMs?: number;
      timeoutS?: number;
    },
  ): Promise<CreatedTask>;
  /** Many tasks in one transaction: all of them, or none. One answer per task, in order. */
  createTasks(tasks: NewTask[]): Promise<CreatedTask[]>;
  /** A cron schedule: each tick creates one task of the template (docs/scheduling.md). */
  createSchedule(name: string, namespace: string, template: string, options: ScheduleOptions): Promise<Schedule>;
  listSchedules(): Promise<Schedule[]>;
  getSchedule(name: string): Promise<Schedule>;
  pauseSchedule(name: string): Promise<Schedule>;
  /** Fires again from the next tick after now (ticks missed while paused never fire). */
  resumeSchedule(name: string): Promise<Schedule>;
  /** The tasks the schedule created stay. */
  deleteSchedule(name: string): Promise<void>;
  getTask(taskId: number): Promise<TaskInfo>;
  listTasks(filter?: {
    state?: TaskState;
    namespace?: string;
    name?: string;
    limit?: number;
    cursor?: number;
  }): Promise<TaskPage>;
  explainTask(taskId: number): Promise<Explanation>;
  cancelTask(taskId: number, options?: { reason?: string }): Promise<Cancelled>;
  retryStep(step: StepRef): Promise<StepChange>;
  resolveStep(step: StepRef, options?: { result?: Json; reason?: string }): Promise<StepChange>;
  /**
   * Sends signal `name` to a task: its steps waiting for it (`wait_for`) complete with
   * `payload` (default null) as their result; a step not waiting yet takes it later.
   * Rejects with `not_found`, `invalid_state` (task finished) or `conflict` (sent before).
   */
  sendSignal(taskId: number, name: string, payload?: Json): Promise<SignalSent>;
  stats(options?: { windowMs?: number }): Promise<Stats>;
  events(options?: {
    since?: number;
    limit?: number;
    waitMs?: number;
    taskId?: number;
    types?: EventName[];
  }): Promise<EventPage>;
  /** Calls `callback` for every new `event` (`'*'`: all); resolves with an unsubscribe function. */
  on(
    event: EventName | '*',
    callback: (event: TaskerEvent) => unknown,
    options?: { since?: number },
  ): Promise<() => void>;
  /** The events as an async iterator (ends on `break`, `signal` abort or `close()`). */
  subscribe(
    event?: EventName | '*',
    options?: { since?: number; signal?: AbortSignal },
  ): AsyncIterableIterator<TaskerEvent>;
  sweep(): Promise<{ expired: number; [field: string]: Json }>;
  migrate(): Promise<{ applied: number; [field: string]: Json }>;
}

/** What a handler receives: one claimed step. */
export class Step {
  private constructor();
  readonly stepId: number;
  readonly taskId: number;
  readonly stepName: string;
  readonly handler: string;
  /** 1 on the first attempt. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly leaseExpiresAt: string | null;
  readonly timeoutMs: number | null;
  readonly context: any;
  readonly config: any;
  /** Parent results by step name. */
  readonly results: Record<string, any>;
  /** Aborted when the run should stop (`signal.reason.code`: a StopReason or `'stopped'`). */
  readonly signal: AbortSignal;
  readonly cancelled: boolean;
  /**
   * Starts a child task of this step (`create_task` with `parent`); `key` names it
   * among the step's children (a retried handler gets the same task back). Resolves
   * to the child task's id. Return `waitForChildren()` to have the step wait for them.
   */
  startChild(options: StartChildOptions): Promise<number>;
}

/** `step.startChild` options. */
export interface StartChildOptions {
  namespace: string;
  name: string;
  /** Unique among the children of the step. */
  key: string;
  context?: Json;
  version?: string;
  priority?: number;
}

/** The marker `waitForChildren()` returns. */
export class WaitForChildren {
  private constructor();
}

/**
 * A handler's return value that makes its step wait for its child tasks: it completes
 * with `{children: [{task_id, key, state, results}]}` in start order once every child
 * is final, or fails with kind `child_failed`.
 */
export function waitForChildren(): WaitForChildren;

export type Handler = (step: Step) => unknown;

/** `worker_close` counts. */
export interface WorkerClosed {
  worker_id: string;
  completed: number;
  failed: number;
  lost: number;
  released: number;
}

/** `worker_stats`. */
export interface WorkerStats {
  worker_id: string;
  name: string;
  handlers: string[];
  concurrency: number;
  batch: number;
  held: number;
  claimed: number;
  completed: number;
  failed: number;
  lost: number;
  released: number;
  stopped: number;
  claims_per_s: number;
  uptime_ms: number;
}

/** A log line of core's about a worker. */
export interface LogRecord {
  level: 'error' | 'warn' | 'info' | 'debug' | 'trace';
  target: string;
  message: string;
}

export interface WorkerOptions {
  /** Handlers run at once (default 1). */
  concurrency?: number;
  /** Most steps held at once (default: concurrency). */
  batch?: number;
  leaseMs?: number;
  /** Recorded as the worker on steps and events. */
  name?: string;
  handlers?: Record<string, Handler>;
}

/** Runs async handlers for the steps core's worker runtime hands out. */
export class Worker extends EventEmitter {
  constructor(tasker: Tasker, options?: WorkerOptions);
  readonly tasker: Tasker;
  readonly concurrency: number;
  readonly batch: number | undefined;
  readonly handlers: Map<string, Handler>;
  readonly running: boolean;
  readonly workerId?: string;
  handle(name: string, fn: Handler): this;
  runUntilIdle(): Promise<WorkerClosed>;
  start(): Promise<void>;
  stop(options?: { graceMs?: number }): Promise<WorkerClosed>;
  stats(): Promise<WorkerStats>;
  on(event: 'log', listener: (record: LogRecord) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** An error reported by the engine. */
export class TaskerError extends Error {
  constructor(code: string, message: string, details?: unknown);
  static readonly CODE: string;
  static fromCode(code: string, message: string, details?: unknown): TaskerError;
  readonly code: ErrorCode | string;
  readonly details: any;
}
export class InvalidJsonError extends TaskerError {}
export class InvalidUtf8Error extends TaskerError {}
export class InvalidArgumentError extends TaskerError {}
export class UnknownOperationError extends TaskerError {}
export class InvalidTemplateError extends TaskerError {}
export class SchemaViolationError extends TaskerError {}
export class NotFoundError extends TaskerError {}
export class ConflictError extends TaskerError {}
export class LeaseLostError extends TaskerError {}
export class InvalidStateError extends TaskerError {}
export class TooLargeError extends TaskerError {}
export class UnavailableError extends TaskerError {}
export class DatabaseError extends TaskerError {}
export class ClosedError extends TaskerError {}
export class InternalError extends TaskerError {}

export const ERROR_CLASSES: Readonly<Record<ErrorCode, typeof TaskerError>>;
export const ERROR_CODES: readonly ErrorCode[];

/** Base of the errors a handler throws to say how its step failed. */
export class HandlerError extends Error {
  readonly details: Json | null;
}
/** Fails the step for good: no retry. */
export class PermanentError extends HandlerError {
  constructor(message: string, options?: { details?: Json });
}
/** Fails this attempt and asks for a retry, after `retryAfterMs` when given. */
export class RetryableError extends HandlerError {
  constructor(message: string, options?: { retryAfterMs?: number; details?: Json });
  readonly retryAfterMs: number | null;
}

export const TASK_STATES: readonly TaskState[];
export const STEP_STATES: readonly StepState[];
export const EVENT_NAMES: readonly EventName[];
export const STOP_REASONS: readonly StopReason[];
/** The version of tasker-core this addon was built with. */
export const version: string;

declare const tasker: {
  Tasker: typeof Tasker;
  Worker: typeof Worker;
  Step: typeof Step;
  TaskerError: typeof TaskerError;
  InvalidJsonError: typeof InvalidJsonError;
  InvalidUtf8Error: typeof InvalidUtf8Error;
  InvalidArgumentError: typeof InvalidArgumentError;
  UnknownOperationError: typeof UnknownOperationError;
  InvalidTemplateError: typeof InvalidTemplateError;
  SchemaViolationError: typeof SchemaViolationError;
  NotFoundError: typeof NotFoundError;
  ConflictError: typeof ConflictError;
  LeaseLostError: typeof LeaseLostError;
  InvalidStateError: typeof InvalidStateError;
  TooLargeError: typeof TooLargeError;
  UnavailableError: typeof UnavailableError;
  DatabaseError: typeof DatabaseError;
  ClosedError: typeof ClosedError;
  InternalError: typeof InternalError;
  ERROR_CLASSES: typeof ERROR_CLASSES;
  ERROR_CODES: typeof ERROR_CODES;
  HandlerError: typeof HandlerError;
  PermanentError: typeof PermanentError;
  RetryableError: typeof RetryableError;
  TASK_STATES: typeof TASK_STATES;
  STEP_STATES: typeof STEP_STATES;
  EVENT_NAMES: typeof EVENT_NAMES;
  STOP_REASONS: typeof STOP_REASONS;
  version: string;
};
/** The whole package as one object (the CommonJS `module.exports`). */
export default tasker;
