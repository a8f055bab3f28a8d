import { quoteName } from '../format/quote.js';
/** What long-running core work reports; the CLI decides how to show it. */
export interface Progress {
  /** `compare`: files already at a target (or left by an interrupted restore) read back and checked. */
  phase: 'scan' | 'backup' | 'restore' | 'verify' | 'compare';
  filesDone: number;
  filesTotal: number;
  bytesDone: number;
  bytesTotal: number;
  /** The file being worked on, when there is one. */
  current?: string;
}

/**
 * A report of `progress` at the file `current`, as one literal: Node 20's V8 gives
 * each object made as `{ ...progress, current }` a hidden class of its own, and
 * these are made for every file.
 */
export function progressAt(progress: Progress, current: string): Progress {
  const { phase, filesDone, filesTotal, bytesDone, bytesTotal } = progress;
  return { phase, filesDone, filesTotal, bytesDone, bytesTotal, current };
}

export interface Notice {
  level: 'info' | 'warning';
  /** Stable machine-readable code, e.g. `file-changed-during-read`. */
  code: string;
  message: string;
  path?: string;
}

export interface Reporter {
  progress?(p: Progress): void;
  notice?(n: Notice): void;
}

export const silentReporter: Reporter = {};

/** `reporter`, with every warning told through it also kept in `warnings`: monitoring counts them. */
export function keepingWarnings(reporter: Reporter | undefined, warnings: Notice[]): Reporter {
  return {
    progress: (p) => reporter?.progress?.(p),
    notice: (n) => {
      if (n.level === 'warning') warnings.push(n);
      reporter?.notice?.(n);
    },
  };
}

/** The notice of a work directory a killed run left, removed by a later one. */
export function leftWorkDirectory(dir: string): Notice {
  return { level: 'info', code: 'work-directory-removed', path: dir, message: `removed ${quoteName(dir)}, left by a run that was killed` };
}
