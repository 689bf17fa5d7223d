/** The placement simulation as a library (for tests and other tools); `main.ts` is the CLI. */
export { ALL_STRATEGIES, BASE, CORE_STRATEGIES, fullPlan, parseStrategy, quickPlan, strategyLabel, strategyName, type Plan, type ScenarioConfig, type StrategySpec } from './config.ts';
export { HrwOrders, makePool, nodeId, runMoves, runWorld, streamToken, type ChurnStats, type MovesResult, type RunOptions, type RunResult, type Snapshot, type VerifyStats } from './engine.ts';
export { planJobs, runJob, type Job, type JobOutput } from './jobs.ts';
export { runJobs } from './pool.ts';
export { renderMarkdown, scalingSvg, distributionSvg, timelineSvg, type SimResults } from './report.ts';
export { Rng, Zipf } from './rng.ts';
export { buildTree, depthProfile, treeStats, type StreamRelays, type TreeStats } from './tree.ts';
