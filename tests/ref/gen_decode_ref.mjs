// gen_decode_ref.mjs: reference texts for tok_decode (tests/test_tok.c), made
// by the independent pure-JavaScript @huggingface/tokenizers from the
// reference ids that gen_tok_ref.mjs wrote, so the test suite checks our
// decoder without node.
//
//   mkdir -p /tmp/tokref && cd /tmp/tokref && npm init -y >/dev/null &&
//     npm install @huggingface/tokenizers@0.2.0
//   node tests/ref/gen_decode_ref.mjs --node-modules /tmp/tokref/node_modules
//
// Run from the source root. For every case of tests/data/reference/tok/
// manifest.json (tokenizer, variant patch, text, ids) it decodes the ids
// twice, keeping and skipping special tokens, with
// clean_up_tokenization_spaces off (the tokenizers library's decode; the
// " ." -> "." clean-up is a transformers option on top of it), and records in
// decode.json whether each result equals the text (read as gen_tok_ref.mjs
// reads it: UTF-8, ill-formed bytes as U+FFFD), with its length and sha256.
// A short result (the stress texts) that differs from the text is also
// written beside the ids as NAME.TEXT[.skip].decoded.txt, to read; the long
// ones are compared by sha256 only, to keep the repository small.
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { createRequire } from "node:module";

const args = process.argv.slice(2);
const i = args.indexOf("--node-modules");
if (i < 0) {
  console.error("usage: node tests/ref/gen_decode_ref.mjs --node-modules DIR");
  process.exit(2);
}
const modules = args[i + 1];
const require = createRequire(path.join(path.resolve(modules), "noop.js"));
const { Tokenizer } = require("@huggingface/tokenizers");
const refPkg = JSON.parse(fs.readFileSync(path.join(modules, "@huggingface/tokenizers/package.json")));

const OUTDIR = "tests/data/reference/tok";
const sha256 = (buf) => crypto.createHash("sha256").update(buf).digest("hex");
const readJson = (p) => JSON.parse(fs.readFileSync(p, "utf8"));
const manifest = readJson(path.join(OUTDIR, "manifest.json"));

const applyPatch = (tj, set) => {
  for (const [p, v] of set) {
    let o = tj;
    for (const k of p.slice(0, -1)) o = o[k];
    o[p[p.length - 1]] = v;
  }
  return tj;
};

const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const cases = [];
for (const c of manifest.cases) {
  const tj = readJson(c.tokenizer);
  if (c.variant) applyPatch(tj, manifest.variants[c.variant].set);
  const cfgPath = path.join(path.dirname(c.tokenizer), "tokenizer_config.json");
  const cfg = fs.existsSync(cfgPath) ? readJson(cfgPath) : {};
  const t = new Tokenizer(tj, cfg);
  const raw = fs.readFileSync(c.ids);
  const ids = [];
  for (let k = 0; k < raw.length; k += 4) ids.push(raw.readInt32LE(k));
  const text = decoder.decode(fs.readFileSync(c.text).subarray(0, c.bytes));
  const base = path.basename(c.ids, ".i32");
  const row = { ids: c.ids, text: c.text, bytes: c.bytes };
  for (const skip of [false, true]) {
    const out = t.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });
    const buf = Buffer.from(out, "utf8");
    const key = skip ? "skip_special" : "keep_special";
    const r = { equals_text: out === text, bytes: buf.length, sha256: sha256(buf) };
    if (!r.equals_text && buf.length <= 16384) {
      r.file = path.join(OUTDIR, `${base}${skip ? ".skip" : ""}.decoded.txt`);
      fs.writeFileSync(r.file, buf);
    }
    row[key] = r;
    console.log(`${base.padEnd(30)} ${key.padEnd(13)} ${r.equals_text ? "== text" : "differs"} ${buf.length} bytes`);
  }
  cases.push(row);
}
fs.writeFileSync(
  path.join(OUTDIR, "decode.json"),
  JSON.stringify(
    {
      about:
        "Reference texts for tok_decode in tests/test_tok.c, written by tests/ref/gen_decode_ref.mjs (read its header): " +
        "decode(ids) of each manifest.json case, keeping and skipping special tokens, clean_up_tokenization_spaces off.",
      reference: { package: refPkg.name, version: refPkg.version, license: refPkg.license },
      cases,
    },
    null,
    1,
  ) + "\n",
);
