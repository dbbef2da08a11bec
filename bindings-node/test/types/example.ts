// A typed program over every name the package exports; `tsc --strict --noEmit`
// checks it against index.d.ts (scripts/node-tests). It is type-checked, not run.
import tasker, {
  Tasker,
  Worker,
  Step,
  TaskerError,
  InvalidJsonError,
  InvalidUtf8Error,
  InvalidArgumentError,
  UnknownOperationError,
  InvalidTemplateError,
  SchemaViolationError,
  NotFoundError,
  ConflictError,
  LeaseLostError,
  InvalidStateError,
  TooLargeError,
  UnavailableError,
  DatabaseError,
  ClosedError,
  InternalError,
  ERROR_CLASSES,
  ERROR_CODES,
  HandlerError,
  PermanentError,
  RetryableError,
  TASK_STATES,
  STEP_STATES,
  EVENT_NAMES,
  STOP_REASONS,
  WaitForChildren,
  waitForChildren,
  version,
} from 'tasker';
import type {
  Json,
  TaskState,
  StepState,
  EventName,
  StopReason,
  ErrorCode,
  Settings,
  Registered,
  Validated,
  CreatedTask,
  TaskSummary,
  ErrorDocument,
  StepInfo,
  TaskInfo,
  TaskPage,
  ExplainedStep,
  Explanation,
  LimitUse,
  Cancelled,
  StepChange,
  SignalSent,
  Stats,
  TaskerEvent,
  EventPage,
  Ping,
  StepRef,
  StartChildOptions,
  Handler,
  WorkerClosed,
  WorkerStats,
  LogRecord,
  WorkerOptions,
  Schedule,
  ScheduleOptions,
  ScheduleTemplate,
} from 'tasker';

async function main(): Promise<void> {
  const settings: Settings = { database_url: 'sqlite://typed.db', lease_ms: 30000 };
  const t: Tasker = await Tasker.open(settings);
  const t2: Tasker = await tasker.Tasker.open('sqlite://typed.db', { env: 'test' });
  const p: Ping = await t.ping();
  const v: string = p.version + version;

  const reg: Registered = await t.registerTemplate({
    namespace: 'shop',
    name: 'order',
    version: '1',
    steps: [{ name: 'validate', handler: 'validate_order' }],
  });
  const regFile: Registered = await t.registerTemplate('templates/order.yaml', { replace: true });
  const regText: Registered = await t.registerTemplateText('namespace: a\n', { replace: false });
  const valid: Validated = await t.validateTemplate('templates/order.yaml');
  const validText: Validated = await t.validateTemplateText('namespace: a\n');
  const tpl: Record<string, Json> = await t.getTemplate('shop', 'order', '1');

  const created: CreatedTask = await t.createTask('shop', 'order', {
    version: '1',
    context: { order_id: 42, items: ['book'] },
    idempotencyKey: 'order-42',
    priority: 1,
  });
  const id: number = created.task_id;
  const batch: CreatedTask[] = await t.createTasks([
    { namespace: 'shop', name: 'order', context: { order_id: 43 }, idempotencyKey: 'order-43' },
    { namespace: 'shop', name: 'order' },
  ]);
  const firstOfBatch: number = batch[0].task_id;
  const later: CreatedTask = await t.createTask('shop', 'order', {
    runAt: new Date(Date.now() + 60000),
    timeoutS: 600,
  });
  const delayed: CreatedTask[] = await t.createTasks([
    { namespace: 'shop', name: 'order', delayMs: 5000, runAt: undefined },
    { namespace: 'shop', name: 'order', runAt: '2030-01-01T00:00:00Z' },
  ]);
  const scheduleOptions: ScheduleOptions = {
    cron: '0 3 * * *',
    timezone: 'Europe/Berlin',
    context: { kind: 'daily' },
    catchUp: 'all',
    catchUpLimit: 7,
  };
  const schedule: Schedule = await t.createSchedule('nightly', 'shop', 'order', scheduleOptions);
  const scheduled: ScheduleTemplate = schedule.template;
  const nextTick: string | null = (await t.pauseSchedule('nightly')).next_fire_at;
  const schedules: Schedule[] = await t.listSchedules();
  await t.resumeSchedule((await t.getSchedule('nightly')).name);
  await t.deleteSchedule('nightly');
  const dueAt: string | undefined = (await t.getTask(later.task_id)).run_at;
  console.log(delayed, scheduled, nextTick, schedules, dueAt);
  const task: TaskInfo = await t.getTask(id);
  const firstStep: StepInfo = task.steps[0];
  const err: ErrorDocument | null = firstStep.error;
  const state: TaskState = task.state;
  const stepState: StepState = firstStep.state;
  const page: TaskPage = await t.listTasks({ state: 'complete', namespace: 'shop', limit: 10 });
  const summaries: TaskSummary[] = page.tasks;
  const why: Explanation = await t.explainTask(id);
  const explained: ExplainedStep | undefined = why.steps[0];
  const held: LimitUse | undefined = explained?.limits?.concurrency;
  const cancelled: Cancelled = await t.cancelTask(id, { reason: 'typed' });
  const ref: StepRef = { taskId: id, stepName: 'validate' };
  const retried: StepChange = await t.retryStep(ref);
  const resolved: StepChange = await t.resolveStep(7, { result: { ok: true }, reason: 'by hand' });
  const signalled: SignalSent = await t.sendSignal(id, 'approved', { by: 'ada' });
  const signalledState: StepState = signalled.steps[0].state;
  const stats: Stats = await t.stats({ windowMs: 60000 });
  const events: EventPage = await t.events({ since: 0, limit: 10, waitMs: 0, taskId: id, types: ['task.created'] });
  const first: TaskerEvent | undefined = events.events[0];
  const name: EventName | undefined = first?.event;
  const raw: unknown = await t.call('ping', {});
  const rawText: string = await t.callJson('ping', '{}');
  await t.sweep();
  await t.migrate();

  const off: () => void = await t.on('step.failed', (ev: TaskerEvent) => console.log(ev.step_name));
  off();
  const ac = new AbortController();
  for await (const ev of t.subscribe('task.completed', { since: stats.last_event_id, signal: ac.signal })) {
    console.log(ev.task_id);
    break;
  }

  const opts: WorkerOptions = { concurrency: 4, batch: 8, name: 'typed', leaseMs: 30000 };
  const worker = new Worker(t, opts);
  const handler: Handler = async (step: Step) => {
    const signal: AbortSignal = step.signal;
    if (signal.aborted || step.cancelled) throw new RetryableError('later', { retryAfterMs: 50, details: { a: 1 } });
    if (step.attempt > step.maxAttempts) throw new PermanentError('never', { details: 'x' });
    return { id: step.stepId, task: step.taskId, name: step.stepName, ctx: step.context, cfg: step.config, parents: step.results };
  };
  worker.handle('validate_order', handler).handle('other', () => null);
  // Child tasks: start them, then wait for them.
  worker.handle('spawn', async (step: Step): Promise<WaitForChildren> => {
    const child: StartChildOptions = { namespace: 'orders', name: 'ship', key: 'ship-1', context: { w: 1 } };
    const childId: number = await step.startChild(child);
    console.log(childId);
    return waitForChildren();
  });
  const info: TaskInfo = await t.getTask(1);
  console.log(info.parent?.step_name, info.steps[0].children?.length);
  worker.on('log', (r: LogRecord) => console.log(r.level, r.target, r.message));
  const counts: WorkerClosed = await worker.runUntilIdle();
  await worker.start();
  const ws: WorkerStats = await worker.stats();
  const stopped: WorkerClosed = await worker.stop({ graceMs: 1000 });
  console.log(counts.completed + stopped.released + ws.held, worker.running, worker.concurrency);

  try {
    await t.getTask(99);
  } catch (e) {
    if (e instanceof NotFoundError) {
      const code: ErrorCode | string = e.code;
      console.log(code, e.details);
    }
    const all = [
      InvalidJsonError,
      InvalidUtf8Error,
      InvalidArgumentError,
      UnknownOperationError,
      InvalidTemplateError,
      SchemaViolationError,
      NotFoundError,
      ConflictError,
      LeaseLostError,
      InvalidStateError,
      TooLargeError,
      UnavailableError,
      DatabaseError,
      ClosedError,
      InternalError,
    ];
    for (const Cls of all) if (e instanceof Cls) console.log(Cls.CODE);
  }
  const fromCode: TaskerError = TaskerError.fromCode('not_found', 'gone', null);
  const byCode: typeof TaskerError = ERROR_CLASSES.closed;
  const codes: readonly ErrorCode[] = ERROR_CODES;
  const he: HandlerError = new PermanentError('x');
  const after: number | null = new RetryableError('y').retryAfterMs;
  const lists: readonly string[] = [...TASK_STATES, ...STEP_STATES, ...EVENT_NAMES, ...STOP_REASONS];
  const reason: StopReason = 'timeout';
  console.log(v, reg, regFile, regText, firstOfBatch, valid, validText, tpl, summaries, err, state, stepState, explained, signalledState, held);
  console.log(cancelled, retried, resolved, name, raw, rawText, fromCode, byCode, codes, he, after, lists, reason);
  await t2.close();
  await t.close();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
