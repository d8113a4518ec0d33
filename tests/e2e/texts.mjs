// Prints N JSON lines, each a short text (a JSON string) for the word-count task module:
// the same N texts on every run (a fixed-seed generator), with repeated words, mixed case,
// punctuation and non-ASCII letters.
//
//   node tests/e2e/texts.mjs 1000 > texts.jsonl

const n = Number(process.argv[2] || 1000);
const words = [
  "the", "cat", "sat", "on", "mat", "The", "CAT", "hat", "Ünïcödé", "naïve", "café", "déjà",
  "vu", "it's", "don't", "42", "x86_64", "Ω", "日本語", "wasm", "module", "job", "result",
];
const marks = ["", "", "", ",", ".", "!", "?", ";", " -", "\t"];
let seed = 0x2545f491;
const next = () => {
  // xorshift32: the same sequence on every machine.
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed;
};
const lines = [];
for (let i = 0; i < n; i++) {
  const len = next() % 40;
  const parts = [];
  for (let j = 0; j < len; j++) parts.push(words[next() % words.length] + marks[next() % marks.length]);
  lines.push(JSON.stringify(parts.join(" ")));
}
process.stdout.write(lines.join("\n") + "\n");
