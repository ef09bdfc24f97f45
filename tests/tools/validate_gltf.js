// Validate one glTF/GLB file with the Khronos glTF validator and print its JSON report on stdout.
// Usage: node validate_gltf.js FILE.glb [NODE_MODULES_DIR]
// NODE_MODULES_DIR (default: <repo>/.tools/node_modules) must hold the npm package gltf-validator.
// Exit status: 0 when the report has no errors, 1 when it has errors, 2 when the file could not be validated.
"use strict";
const fs = require("fs");
const path = require("path");

const file = process.argv[2];
const modules = process.argv[3] || path.join(__dirname, "..", "..", ".tools", "node_modules");
if (!file) {
  console.error("usage: node validate_gltf.js FILE.glb [NODE_MODULES_DIR]");
  process.exit(2);
}
const validator = require(path.join(modules, "gltf-validator"));
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, { uri: path.basename(file), maxIssues: 0, writeTimestamp: false })
  .then((report) => {
    console.log(JSON.stringify(report, null, 1));
    process.exit(report.issues.numErrors > 0 ? 1 : 0);
  })
  .catch((err) => {
    console.error(String(err));
    process.exit(2);
  });
