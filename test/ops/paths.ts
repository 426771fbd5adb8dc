/** Repository paths of the ops bundle, resolved from this file so tests run from any cwd. */
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const repoPath = (relative: string): string =>
  fileURLToPath(new URL(`../../${relative}`, import.meta.url));

export const RULES_FILE = repoPath('alerts/tokenmeter.rules.yml');
export const RULES_TEST_FILE = repoPath('alerts/tokenmeter.rules.test.yml');
export const PROMETHEUS_CONFIG = repoPath('prometheus.yml');
export const COMPOSE_PROMETHEUS_CONFIG = repoPath('compose/prometheus.yml');
export const ALERTMANAGER_CONFIG = repoPath('alertmanager/alertmanager.yml');
export const COMPOSE_FILE = repoPath('docker-compose.yml');
export const DASHBOARDS = ['tokenmeter-overview', 'tokenmeter-latency'].map((uid) => ({
  uid,
  path: repoPath(`dashboards/${uid}.json`),
}));
export const RUNBOOK = repoPath('docs/runbook.md');
