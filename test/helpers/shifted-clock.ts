/**
 * Loaded with `--import` into a child lifeboat (as libfaketime would be): its clock says
 * SHIFTED_CLOCK_AT when it starts and runs on from there, as on a host whose clock was set so.
 * Points taken this way have the ages a repository gathers over weeks of nightly backups.
 */
const at = Date.parse(process.env.SHIFTED_CLOCK_AT ?? '');
if (Number.isFinite(at)) {
  const RealDate = Date;
  const offset = at - RealDate.now();
  class ShiftedDate extends RealDate {
    constructor(...args: unknown[]) {
      if (args.length === 0) super(RealDate.now() + offset);
      else super(...(args as [string | number | Date]));
    }
    static override now(): number {
      return RealDate.now() + offset;
    }
  }
  globalThis.Date = ShiftedDate as DateConstructor;
}
export {};
