import { UsageError } from '../errors.js';
import type { S3Settings } from './open.js';
import type { Storage } from './storage.js';

export class S3Storage {
  static async create(_options: { bucket: string; prefix: string; settings: S3Settings; env: NodeJS.ProcessEnv }): Promise<Storage> {
    throw new UsageError('s3:// repositories are not available yet');
  }
}
