#!/usr/bin/env node
import v8 from 'node:v8';
if (process.env.TMFLAGS) v8.setFlagsFromString(process.env.TMFLAGS);
await import('/work/main/dist/cli/main.js');
