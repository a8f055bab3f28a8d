import { keys, type VolumeRecord } from '../format/manifest.js';
import { TarVolumeWriter } from '../format/tar.js';
import { IntegrityError } from '../errors.js';
import type { Storage } from '../storage/storage.js';

/**
 * Feeds entries into tar volumes of one backup point, starting a new volume
 * once the current one passes `volumeSize` and letting up to `concurrency`
 * finished volumes upload while the next one is written.
 */
export class VolumeSink {
  private writer?: TarVolumeWriter;
  private upload?: Promise<unknown>;
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
    if (this.writer && this.writer.size >= this.volumeSize) await this.closeCurrent();
    if (!this.writer) {
      const index = this.volumes.length;
      const writer = new TarVolumeWriter();
      const key = keys.volume(this.pointId, index);
      const record: VolumeRecord = { key, size: 0, crc32: 0, entries: 0, compression: 'none', encryption: this.storage.encryption ?? 'none' };
      this.volumes.push(record);
      this.upload = this.storage.put(key, writer.stream, { signal: this.signal }).then(
        (info) => {
          if (info.size !== writer.size) {
            throw new IntegrityError(`volume ${key} was stored with ${info.size} bytes, ${writer.size} were written`);
          }
        },
        (err) => {
          this.failure ??= err;
          writer.stream.destroy(err instanceof Error ? err : new Error(String(err)));
          throw err;
        },
      );
      this.upload.catch(() => undefined);
      this.writer = writer;
    }
    return { writer: this.writer, volume: this.volumes.length - 1 };
  }

  private async closeCurrent(): Promise<void> {
    const writer = this.writer!;
    await writer.end();
    const record = this.volumes[this.volumes.length - 1]!;
    record.size = writer.size;
    record.crc32 = writer.crc;
    record.entries = writer.entries;
    this.inFlight.push(this.upload!);
    this.writer = undefined;
    this.upload = undefined;
    while (this.inFlight.length >= this.concurrency) await this.inFlight.shift();
  }

  /** Ends the last volume and waits until every volume is stored. */
  async finish(): Promise<VolumeRecord[]> {
    if (this.writer) await this.closeCurrent();
    while (this.inFlight.length > 0) await this.inFlight.shift();
    if (this.failure) throw this.failure;
    return this.volumes;
  }

  /** Stops every upload in progress; their partial objects never become visible. */
  abort(err: Error): void {
    this.writer?.stream.destroy(err);
  }

  async settle(): Promise<void> {
    await Promise.allSettled([this.upload, ...this.inFlight]);
  }
}
