// After `vite build`: write a .gz next to each compressible bundle file so that
// zmirror/ui.py can send it to clients that accept gzip (no compression per request).
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync, constants } from 'node:zlib'

const root = fileURLToPath(new URL('../../zmirror/webui', import.meta.url))
const exts = /\.(js|mjs|css|svg|json|txt)$/i
let count = 0
let before = 0
let after = 0

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name)
    const st = statSync(path)
    if (st.isDirectory()) walk(path)
    else if (exts.test(name) && st.size >= 1024) {
      const data = readFileSync(path)
      const gz = gzipSync(data, { level: constants.Z_BEST_COMPRESSION })
      if (gz.length < data.length * 0.9) {
        writeFileSync(`${path}.gz`, gz)
        count += 1
        before += data.length
        after += gz.length
      }
    }
  }
}

walk(root)
console.log(`gzip: ${count} files, ${(before / 1024).toFixed(0)} KiB -> ${(after / 1024).toFixed(0)} KiB`)
