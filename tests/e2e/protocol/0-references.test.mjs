// docs/protocol.md is what the tests, the code and the other documents cite for Frappe's
// behaviour (`protocol §5.2`, `§10 #11`, `§3.3 #4'`, `§3.2 step 3`). A fresh clone must resolve
// every such reference: each cited section is a heading of docs/protocol.md, each cited item
// (`#N`, `step N`) is a numbered row or step of that section, nothing points at a document
// outside the repository, and the chapters in the names of protocol/ files exist. No server
// is started; this reads files only.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { ROOT } from "../../support/harness.mjs";

const PROTOCOL = path.join(ROOT, "docs/protocol.md");

/** Folders and files that are not ours to cite from, or not text. */
const SKIP = new Set([".git", "target", "node_modules", ".cache", "tests/protocol-suites", "tests/artifacts"]);

/** Every text file of the repository, as [relative path, content]. */
function repositoryFiles(dir = ROOT, found = []) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    const rel = path.relative(ROOT, full);
    if (SKIP.has(entry.name) || SKIP.has(rel)) continue;
    if (entry.isDirectory()) {
      repositoryFiles(full, found);
    } else if (entry.isFile() && fs.statSync(full).size < 2_000_000) {
      const text = fs.readFileSync(full, "utf8");
      if (!text.includes("\0")) found.push([rel, text]);
    }
  }
  return found;
}

/**
 * The sections of docs/protocol.md: id ("1", "3.3", "6.2a") → the numbered items of its text,
 * from table rows (`| 4' |`) and numbered lists (`3. `).
 */
function sections() {
  const result = new Map();
  let items = null;
  for (const line of fs.readFileSync(PROTOCOL, "utf8").split("\n")) {
    const heading = /^#{2,4} (\d+(?:\.\d+[a-z]?)?)\.?\s/.exec(line);
    if (heading) {
      items = new Set();
      result.set(heading[1], items);
      continue;
    }
    if (/^#{1,4} /.test(line)) { items = null; continue; }
    const item = /^\| (\d+'?) \|/.exec(line) ?? /^(\d+)\. /.exec(line);
    if (item && items) items.add(item[1]);
  }
  return result;
}

/**
 * Every `§` citation in `text`: the section, and the items it names after it (`#1–#4'` gives
 * 1 and 4', `step 3` gives 3). Section signs of RFCs (`RFC 9110 §8.8.3`) are not ours.
 */
function citations(text) {
  const found = [];
  const pattern = /§\s?(\d+(?:\.\d+[a-z]?)?)((?:\s*#\d+'?(?:\s*[–-]\s*#\d+'?)?)|(?:\s+step\s+\d+))?/g;
  for (const match of text.matchAll(pattern)) {
    const before = text.slice(Math.max(0, match.index - 16), match.index);
    if (/RFC\s*\d+\s*$/.test(before)) continue;
    const line = text.slice(0, match.index).split("\n").length;
    const items = [...(match[2] ?? "").matchAll(/(\d+'?)/g)].map((m) => m[1]);
    found.push({ section: match[1], items, line, text: match[0].trim() });
  }
  return found;
}

test("every section and item the repository cites exists in docs/protocol.md", () => {
  const known = sections();
  assert.ok(known.size > 30, `docs/protocol.md has its numbered sections (found ${known.size})`);
  const missing = [];
  let cited = 0;
  for (const [file, text] of repositoryFiles()) {
    for (const citation of citations(text)) {
      cited += 1;
      const items = known.get(citation.section);
      if (!items) {
        missing.push(`${file}:${citation.line}: ${citation.text} (no section ${citation.section})`);
        continue;
      }
      for (const item of citation.items) {
        if (!items.has(item)) missing.push(`${file}:${citation.line}: ${citation.text} (§${citation.section} has no item ${item})`);
      }
    }
  }
  assert.ok(cited > 100, `the repository's citations were found (${cited})`);
  assert.deepEqual(missing, [], `citations docs/protocol.md cannot resolve:\n${missing.join("\n")}`);
});

test("nothing points at a protocol document outside the repository", () => {
  const outside = new RegExp(["shared", "spec"].join("[/ ]"), "i");
  const offenders = repositoryFiles()
    .flatMap(([file, text]) => text.split("\n").map((line, i) => [file, i + 1, line]))
    .filter(([, , line]) => outside.test(line))
    .map(([file, line, text]) => `${file}:${line}: ${text.trim()}`);
  assert.deepEqual(offenders, [], `cite docs/protocol.md instead:\n${offenders.join("\n")}`);
});

test("the chapters in the names of protocol/ test files are chapters of docs/protocol.md", () => {
  const known = sections();
  const dir = path.join(ROOT, "tests/e2e/protocol");
  for (const name of fs.readdirSync(dir).filter((n) => n.endsWith(".test.mjs"))) {
    const chapters = /^(\d+)(?:-(\d+))?-/.exec(name);
    assert.ok(chapters, `${name} starts with the chapter(s) it checks`);
    for (const chapter of chapters.slice(1).filter(Boolean)) {
      assert.ok(known.has(chapter), `${name}: docs/protocol.md has no chapter ${chapter}`);
    }
  }
});
