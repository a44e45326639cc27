// The names the README examples use without defining them: what a front end has at hand.
// tests/test_ts_client.py compiles every ts/tsx block of clients/typescript/README.md and of the
// main README.md with these declarations, beside app.tsx.
declare const apiKey: string;
declare const apiKeyOrJwt: string;
declare const file: File;
declare const img: HTMLImageElement;
declare const inkq: import("@inkq/client").InkqClient;
