import { keys, type VolumeRecord } from '../format/manifest.js';
import { TarVolumeWriter } from '../format/tar.js';
import { IntegrityError } from '../errors.js';
import type { ObjectWriter, Storage } from '../storage/storage.js';

/**
 * Feeds entries into tar volumes of one backup point, starting a new volume
 * once the current one passes `volumeSize` and letting up to `concurrency`
 * finished volumes complete (flush, upload) while the next one is written.
 */
export class VolumeSink {
  private active?: { tar: TarVolumeWriter; out: ObjectWriter };
  private readonly inFlight: Promise<unknown>[] = [];
  private failure: unknown;
  readonly volumes: VolumeRecord[] = [];

  constructor(
    private readonly storage: Storage,
    private readonly pointId: string,
    private readonly volumeSize: number,
    private readonly concurrency: number,
    private readonly signal?: AbortSignal,
  ) {}

  /** The volume the next entry goes to; opens one when needed. */
  async current(): Promise<{ writer: TarVolumeWriter; volume: number }> {
    if (this.failure) throw this.failure;
    if (this.active && this.active.tar.size >= this.volumeSize) await this.closeCurrent();
    if (!this.active) {
      const key = keys.volume(this.pointId, this.volumes.length);
      const out = await this.storage.openWriter(key, { signal: this.signal });
      this.volumes.push({ key, size: 0, framingCrc32: 0, entries: 0, compression: 'none', encryption: this.storage.encryption ?? 'none' });
      this.active = { tar: new TarVolumeWriter(out), out };
    }
    return { writer: this.active.tar, volume: this.volumes.length - 1 };
  }

  private async closeCurrent(): Promise<void> {
    const { tar, out } = this.active!;
    this.active = undefined;
    try {
      await tar.end();
    } catch (err) {
      await out.abort(err as Error);
      throw err;
    }
    const record = this.volumes[this.volumes.length - 1]!;
    record.size = tar.size;
    record.framingCrc32 = tar.framingCrc;
    record.entries = tar.entries;
    const stored = out.end().then(
      (info) => {
        if (info.size !== tar.size) throw new IntegrityError(`volume ${record.key} was stored with ${info.size} bytes, ${tar.size} were written`);
      },
      (err: unknown) => {
        this.failure ??= err;
        throw err;
      },
    );
    stored.catch(() => undefined);
    this.inFlight.push(stored);
    while (this.inFlight.length >= this.concurrency) await this.inFlight.shift();
  }

  /** Ends the last volume and waits until every volume is stored. */
  async finish(): Promise<VolumeRecord[]> {
    if (this.active) await this.closeCurrent();
    while (this.inFlight.length > 0) await this.inFlight.shift();
    if (this.failure) throw this.failure;
    return this.volumes;
  }

  /** Stops the volume being written; its partial object never becomes visible. */
  abort(err: Error): void {
    const current = this.active;
    this.active = undefined;
    if (current) this.inFlight.push(current.out.abort(err));
  }

  async settle(): Promise<void> {
    await Promise.allSettled(this.inFlight);
  }
}
