// A store-only ZIP writer (no compression: PNG, JPEG and WebP are compressed already), enough
// for "download a batch's images as one file" without a library. Format: PKWARE APPNOTE 6.3.x,
// sections 4.3.7 (local header), 4.3.12 (central directory) and 4.3.16 (end record). No ZIP64,
// so an archive stays under 4 GiB and 65,535 files, far above a browser's memory anyway.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i += 1) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** MS-DOS date and time words for a Date (the ZIP format's only timestamp without extras). */
function dosTime(date) {
  const time = (date.getHours() << 11) | (date.getMinutes() << 5) | Math.floor(date.getSeconds() / 2);
  const day = ((Math.max(1980, date.getFullYear()) - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate();
  return [time, day];
}

function header(size) {
  const buffer = new ArrayBuffer(size);
  return { bytes: new Uint8Array(buffer), view: new DataView(buffer) };
}

/**
 * Build a ZIP Blob from [{name, bytes: Uint8Array}], names as UTF-8 (general purpose bit 11).
 */
export function zipFiles(files, when = new Date()) {
  const encoder = new TextEncoder();
  const [time, day] = dosTime(when);
  const parts = [];
  const central = [];
  let offset = 0;
  for (const file of files) {
    const name = encoder.encode(file.name);
    const crc = crc32(file.bytes);
    const size = file.bytes.length;
    const local = header(30 + name.length);
    local.view.setUint32(0, 0x04034b50, true); // local file header signature
    local.view.setUint16(4, 20, true); // version needed: 2.0
    local.view.setUint16(6, 0x0800, true); // UTF-8 names
    local.view.setUint16(8, 0, true); // method: stored
    local.view.setUint16(10, time, true);
    local.view.setUint16(12, day, true);
    local.view.setUint32(14, crc, true);
    local.view.setUint32(18, size, true); // compressed size
    local.view.setUint32(22, size, true); // uncompressed size
    local.view.setUint16(26, name.length, true);
    local.bytes.set(name, 30);
    parts.push(local.bytes, file.bytes);

    const entry = header(46 + name.length);
    entry.view.setUint32(0, 0x02014b50, true); // central directory signature
    entry.view.setUint16(4, 20, true); // version made by
    entry.view.setUint16(6, 20, true); // version needed
    entry.view.setUint16(8, 0x0800, true);
    entry.view.setUint16(10, 0, true);
    entry.view.setUint16(12, time, true);
    entry.view.setUint16(14, day, true);
    entry.view.setUint32(16, crc, true);
    entry.view.setUint32(20, size, true);
    entry.view.setUint32(24, size, true);
    entry.view.setUint16(28, name.length, true);
    entry.view.setUint32(42, offset, true); // where the local header starts
    entry.bytes.set(name, 46);
    central.push(entry.bytes);
    offset += local.bytes.length + size;
  }
  const directorySize = central.reduce((sum, entry) => sum + entry.length, 0);
  const end = header(22);
  end.view.setUint32(0, 0x06054b50, true); // end of central directory signature
  end.view.setUint16(8, files.length, true); // entries on this disk
  end.view.setUint16(10, files.length, true); // entries in total
  end.view.setUint32(12, directorySize, true);
  end.view.setUint32(16, offset, true); // where the central directory starts
  return new Blob([...parts, ...central, end.bytes], { type: "application/zip" });
}
