import * as os from 'node:os';
import type { CheckName, DrillCheck, DrillResult } from './drill.js';

/**
 * JUnit XML as CI systems read it (Jenkins, GitLab, the GitHub test-report
 * actions): one <testsuite> per drill, one <testcase> per check, <failure> on
 * a failed check, <error> when the drill could not run at all.
 */

// Characters XML 1.0 forbids even escaped; smoke output can contain anything.
// eslint-disable-next-line no-control-regex
const INVALID_XML = /[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

export function xmlEscape(text: string): string {
  return text
    .replace(INVALID_XML, '\uFFFD')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

const attrs = (a: Record<string, string | number>) =>
  Object.entries(a)
    .map(([k, v]) => ` ${k}="${xmlEscape(String(v))}"`)
    .join('');

const seconds = (ms: number) => (ms / 1000).toFixed(3);

const CHECK_TITLES: Record<CheckName, string> = {
  restore: 'restore',
  checksums: 'checksums',
  model: 'model',
  smoke: 'smoke',
  rto: 'RTO',
  rpo: 'RPO',
};

interface Case {
  name: string;
  durationMs: number;
  status: 'passed' | 'failed' | 'skipped' | 'error';
  message: string;
  output?: string;
}

function render(suiteName: string, timestamp: string, durationMs: number, properties: Record<string, string | number>, cases: Case[]): string {
  const count = (s: Case['status']) => cases.filter((c) => c.status === s).length;
  const totals = { tests: cases.length, failures: count('failed'), errors: count('error'), skipped: count('skipped'), time: seconds(durationMs) };
  const lines = ['<?xml version="1.0" encoding="UTF-8"?>', `<testsuites${attrs({ name: 'lifeboat drill', ...totals })}>`];
  lines.push(`  <testsuite${attrs({ name: suiteName, ...totals, timestamp, hostname: os.hostname() })}>`);
  lines.push('    <properties>');
  for (const [name, value] of Object.entries(properties)) lines.push(`      <property${attrs({ name, value })}/>`);
  lines.push('    </properties>');
  for (const c of cases) {
    const head = `    <testcase${attrs({ classname: 'lifeboat.drill', name: c.name, time: seconds(c.durationMs) })}`;
    const inner: string[] = [];
    if (c.status === 'failed') inner.push(`      <failure${attrs({ message: c.message, type: `${c.name}-failed` })}>${xmlEscape(c.message)}</failure>`);
    else if (c.status === 'error') inner.push(`      <error${attrs({ message: c.message, type: 'drill-error' })}>${xmlEscape(c.message)}</error>`);
    else if (c.status === 'skipped') inner.push(`      <skipped${attrs({ message: c.message })}/>`);
    const out = [c.status === 'passed' ? c.message : '', c.output ?? ''].filter(Boolean).join('\n');
    if (out) inner.push(`      <system-out>${xmlEscape(out)}</system-out>`);
    lines.push(inner.length ? `${head}>\n${inner.join('\n')}\n    </testcase>` : `${head}/>`);
  }
  lines.push('  </testsuite>', '</testsuites>', '');
  return lines.join('\n');
}

const testcases = (checks: readonly DrillCheck[]): Case[] =>
  checks.map((c) => ({ name: CHECK_TITLES[c.name], durationMs: c.durationMs, status: c.status, message: c.message, output: c.output }));

export function drillJUnit(result: DrillResult, repository: string): string {
  const properties: Record<string, string | number> = { repository, point: result.point, rtoMs: result.rtoMs, rpoMs: result.rpoMs };
  if (result.objectives.rto) properties.rtoObjectiveMs = result.objectives.rto.objectiveMs;
  if (result.objectives.rpo) properties.rpoObjectiveMs = result.objectives.rpo.objectiveMs;
  if (result.smoke) properties.smoke = result.smoke.command;
  return render(
    `lifeboat drill ${result.point}`,
    result.startedAt,
    result.rtoMs,
    properties,
    testcases(result.checks),
  );
}

/**
 * A report for a drill that did not finish (no such point, an unreachable repository, an interruption):
 * the checks it made, the one it was making as an error, the rest skipped (see unfinishedChecks).
 */
export function drillErrorJUnit(checks: readonly DrillCheck[], repository: string, selector: string, startedAt: Date): string {
  return render(`lifeboat drill ${selector}`, startedAt.toISOString(), Date.now() - startedAt.getTime(), { repository, point: selector }, testcases(checks));
}
