import assert from "node:assert/strict";
import { mkdtemp, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import wavefile from "wavefile";
import { FRAME_SAMPLES, fileSource, Heard, MAX_FILE_BYTES, toneSource } from "./audio.js";

/** What a source's first `frames` frames sound like, by the same analysis a call's listener uses. */
function listen(next: () => Uint8Array, frames: number, seqStep = 1) {
  const heard = new Heard();
  for (let i = 0; i < frames; i++) {
    const frame = next();
    assert.equal(frame.length, FRAME_SAMPLES, "every frame is 20 ms at 8 kHz");
    heard.add(frame, (i * seqStep) % 0x10000);
  }
  return heard.summary();
}

const sine = (hz: number, rate: number, seconds: number, amplitude: number) =>
  Array.from(
    { length: Math.round(rate * seconds) },
    (_, i) => amplitude * Math.sin((2 * Math.PI * hz * i) / rate),
  );

describe("call audio: sources and what is heard", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sb-call-audio-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("a tone is heard at its pitch, looped past its one second without a gap", () => {
    for (const hz of [300, 440, 1000]) {
      const tone = toneSource(hz);
      assert.equal(tone.label, `${hz} Hz tone`);
      const s = listen(() => tone.next(), 130);
      assert.equal(s.packets, 130);
      assert.equal(s.seconds, 2.6);
      assert.equal(s.lost, 0);
      assert.ok(Math.abs((s.frequencyHz ?? 0) - hz) <= 2, `${hz} Hz heard as ${s.frequencyHz}`);
      // Amplitude 0.5 is -6 dBFS peak, -9 dBFS RMS.
      assert.equal(s.levelDbfs, -9);
    }
  });

  it("WAV files of any rate, depth and channel count are mixed to mono and resampled", async () => {
    const cases: Array<{ name: string; channels: number; rate: number; depth: string; muLaw?: boolean }> = [
      { name: "stereo-44k-16.wav", channels: 2, rate: 44_100, depth: "16" },
      { name: "mono-48k-float.wav", channels: 1, rate: 48_000, depth: "32f" },
      { name: "mono-8k-mulaw.wav", channels: 1, rate: 8000, depth: "16", muLaw: true },
      { name: "stereo-16k-24.wav", channels: 2, rate: 16_000, depth: "24" },
    ];
    for (const c of cases) {
      const full = c.depth === "32f" ? 0.4 : c.depth === "24" ? 0.4 * 8_388_607 : 0.4 * 32_767;
      const samples = sine(600, c.rate, 1.5, full).map((v) => (c.depth === "32f" ? v : Math.round(v)));
      const wav = new wavefile.WaveFile();
      wav.fromScratch(c.channels, c.rate, c.depth, c.channels === 1 ? samples : [samples, samples]);
      if (c.muLaw === true) wav.toMuLaw();
      const path = join(dir, c.name);
      await writeFile(path, wav.toBuffer());
      const source = await fileSource(path);
      assert.equal(source.label, `${c.name} (1.5 s)`);
      const s = listen(() => source.next(), 75);
      assert.ok(Math.abs((s.frequencyHz ?? 0) - 600) <= 10, `${c.name}: 600 Hz heard as ${s.frequencyHz}`);
      assert.ok((s.levelDbfs ?? -99) >= -13 && (s.levelDbfs ?? 0) <= -9, `${c.name}: level ${s.levelDbfs}`);
    }
  });

  it("a stereo file is mixed, not one channel taken: opposite channels cancel", async () => {
    const rate = 8000;
    const left = sine(500, rate, 1, 10_000).map(Math.round);
    const wav = new wavefile.WaveFile();
    wav.fromScratch(2, rate, "16", [left, left.map((v) => -v)]);
    const path = join(dir, "cancel.wav");
    await writeFile(path, wav.toBuffer());
    const source = await fileSource(path);
    assert.ok((listen(() => source.next(), 50).levelDbfs ?? 0) < -60);
  });

  it("refuses what is not a WAV file, an empty one, and one over the size limit, naming the file", async () => {
    const text = join(dir, "notes.txt");
    await writeFile(text, "this is not audio at all, just some words");
    await assert.rejects(fileSource(text), /notes\.txt is not a WAV file this can read/);

    const empty = new wavefile.WaveFile();
    empty.fromScratch(1, 8000, "16", []);
    const emptyPath = join(dir, "empty.wav");
    await writeFile(emptyPath, empty.toBuffer());
    await assert.rejects(fileSource(emptyPath), /empty\.wav holds no audio/);

    // Refused by its size alone, before a byte is read: a sparse file costs nothing.
    const huge = join(dir, "huge.wav");
    await writeFile(huge, "");
    await truncate(huge, MAX_FILE_BYTES + 1);
    await assert.rejects(fileSource(huge), new RegExp(`huge\\.wav is ${MAX_FILE_BYTES + 1} bytes`));

    await assert.rejects(fileSource(join(dir, "missing.wav")), /ENOENT/);
  });

  it("counts lost packets by sequence number, across the 16-bit wrap", () => {
    const tone = toneSource(440);
    const heard = new Heard();
    for (const seq of [65_533, 65_534, 65_535, 2, 3, 10]) heard.add(tone.next(), seq);
    // 0 and 1 missing across the wrap, 4 to 9 missing later.
    assert.equal(heard.summary().lost, 8);
    assert.equal(heard.summary().packets, 6);
  });
});
