export declare const MALLOC_TUNABLES: string[];
export declare function withMallocTuning(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv | null;
