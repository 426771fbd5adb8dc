/** The shipped rules file, parsed. */
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { RULES_FILE } from './paths.js';

export interface Rule {
  record?: string;
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface RulesFile {
  groups: { name: string; rules: Rule[] }[];
}

export function loadRules(path = RULES_FILE): RulesFile {
  return parse(readFileSync(path, 'utf8')) as RulesFile;
}

export const allRules = (file: RulesFile = loadRules()): Rule[] => file.groups.flatMap((g) => g.rules);
export const alertRules = (file?: RulesFile): Rule[] => allRules(file).filter((r) => r.alert !== undefined);
export const recordingRuleNames = (file?: RulesFile): Set<string> =>
  new Set(allRules(file).flatMap((r) => (r.record === undefined ? [] : [r.record])));
