import { readFile, stat } from "node:fs/promises";
import wavefile from "wavefile";

const { WaveFile } = wavefile;

/**
 * The audio of `switchboard call` and `answer`: G.711 mu-law (PCMU) at 8 kHz in 20 ms frames.
 * PCMU is the one codec every WebRTC stack has that needs no native encoder (werift encodes
 * nothing itself), so a CLI call also talks to a browser or a phone app.
 */
export const SAMPLE_RATE = 8000;
/** Samples (and mu-law bytes) in one 20 ms RTP packet. */
export const FRAME_SAMPLES = 160;
/** The RTP payload type of PCMU (RFC 3551, static). */
export const PCMU_PAYLOAD_TYPE = 0;

/** Files larger than this are refused before they are read (a WAV of ~6 min of CD audio). */
export const MAX_FILE_BYTES = 64 * 1024 * 1024;
/** What a file becomes at most once converted: 10 minutes of 8 kHz mu-law. */
const MAX_FILE_SECONDS = 600;

/** Where the audio a call sends comes from: mu-law frames, looped for as long as the call lasts. */
export interface AudioSource {
  /** For people: "440 Hz tone", "voice.wav (3.2 s)". */
  label: string;
  /** The next 20 ms frame (FRAME_SAMPLES mu-law bytes); wraps around at the end. */
  next(): Uint8Array;
}

/** Loops over mu-law audio one frame at a time. */
function looping(label: string, mulaw: Uint8Array): AudioSource {
  // Whole frames only, so every packet is 20 ms.
  const usable = mulaw.subarray(0, mulaw.length - (mulaw.length % FRAME_SAMPLES));
  let at = 0;
  return {
    label,
    next() {
      const frame = usable.subarray(at, at + FRAME_SAMPLES);
      at = (at + FRAME_SAMPLES) % usable.length;
      return frame;
    },
  };
}

/** Floats in [-1, 1] at `rate` Hz, mono, to 8 kHz mu-law (resampled by wavefile). */
function toMulaw(samples: Float64Array, rate: number): Uint8Array {
  const wav = new WaveFile();
  wav.fromScratch(1, rate, "32f", samples);
  if (rate !== SAMPLE_RATE) wav.toSampleRate(SAMPLE_RATE);
  wav.toBitDepth("16");
  wav.toMuLaw();
  return (wav.data as { samples: Uint8Array }).samples;
}

/** A sine wave: one second of it, looped (a whole number of cycles, so the loop has no click). */
export function toneSource(hz: number): AudioSource {
  const samples = new Float64Array(SAMPLE_RATE);
  for (let i = 0; i < samples.length; i++) samples[i] = 0.5 * Math.sin((2 * Math.PI * hz * i) / SAMPLE_RATE);
  return looping(`${hz} Hz tone`, toMulaw(samples, SAMPLE_RATE));
}

/**
 * A WAV file (PCM of any bit depth, float, mu-law, A-law or IMA ADPCM; any rate and channel
 * count), mixed down to mono and resampled to 8 kHz.
 */
export async function fileSource(path: string): Promise<AudioSource> {
  const size = (await stat(path)).size;
  if (size > MAX_FILE_BYTES) {
    throw new Error(`${path} is ${size} bytes; an audio file may have at most ${MAX_FILE_BYTES}`);
  }
  const wav = new WaveFile();
  try {
    wav.fromBuffer(await readFile(path));
  } catch (err) {
    throw new Error(`${path} is not a WAV file this can read (${err instanceof Error ? err.message : err})`);
  }
  // Compressed encodings are expanded to 16-bit PCM first; then everything is floats.
  if (wav.bitDepth === "8m") wav.fromMuLaw();
  else if (wav.bitDepth === "8a") wav.fromALaw();
  else if (wav.bitDepth === "4") wav.fromIMAADPCM();
  wav.toBitDepth("32f");
  // Read after the conversions, which rebuild the header.
  const fmt = wav.fmt as { sampleRate: number };
  const raw = wav.getSamples(false) as unknown as Float64Array | Float64Array[];
  const channels = Array.isArray(raw) ? raw : [raw];
  const frames = channels[0]?.length ?? 0;
  if (frames === 0 || fmt.sampleRate <= 0) throw new Error(`${path} holds no audio`);
  if (frames / fmt.sampleRate > MAX_FILE_SECONDS) {
    throw new Error(`${path} lasts ${Math.round(frames / fmt.sampleRate)} s; at most ${MAX_FILE_SECONDS} s`);
  }
  const mono = new Float64Array(frames);
  for (const channel of channels) for (let i = 0; i < frames; i++) mono[i]! += channel[i]! / channels.length;
  const mulaw = toMulaw(mono, fmt.sampleRate);
  if (mulaw.length < FRAME_SAMPLES) throw new Error(`${path} is shorter than one 20 ms frame`);
  const name = path.split("/").at(-1) ?? path;
  return looping(`${name} (${(frames / fmt.sampleRate).toFixed(1)} s)`, mulaw);
}

/** What came in: counted whole, analysed over the last few seconds. */
export interface HeardSummary {
  packets: number;
  /** Audio received, in seconds (20 ms a packet). */
  seconds: number;
  /** Packets missing by RTP sequence number. */
  lost: number;
  /** The strongest frequency by zero crossings, in Hz (a tone's pitch), of the recent audio. */
  frequencyHz?: number;
  /** The recent audio's RMS level in dB below full scale. */
  levelDbfs?: number;
}

/** Seconds of received audio kept for the analysis: a bounded ring, whatever the call's length. */
const ANALYSED_SECONDS = 2;

/** Collects received PCMU packets and says what was heard. */
export class Heard {
  private packets = 0;
  private lost = 0;
  private lastSeq: number | undefined;
  private readonly ring = new Uint8Array(SAMPLE_RATE * ANALYSED_SECONDS);
  private filled = 0;
  private at = 0;

  /** One RTP payload of mu-law bytes and its sequence number. */
  add(payload: Uint8Array, seq: number): void {
    this.packets++;
    if (this.lastSeq !== undefined) {
      const gap = (seq - this.lastSeq + 0x10000) % 0x10000;
      // A small forward gap is loss; anything else (reordering, a restart) is not counted.
      if (gap > 1 && gap < 1000) this.lost += gap - 1;
    }
    this.lastSeq = seq;
    for (const b of payload) {
      this.ring[this.at] = b;
      this.at = (this.at + 1) % this.ring.length;
    }
    this.filled = Math.min(this.ring.length, this.filled + payload.length);
  }

  summary(): HeardSummary {
    const base = {
      packets: this.packets,
      seconds: (this.packets * FRAME_SAMPLES) / SAMPLE_RATE,
      lost: this.lost,
    };
    if (this.filled < FRAME_SAMPLES) return base;
    const start = (this.at - this.filled + this.ring.length) % this.ring.length;
    const mulaw = new Uint8Array(this.filled);
    for (let i = 0; i < this.filled; i++) mulaw[i] = this.ring[(start + i) % this.ring.length]!;
    const wav = new WaveFile();
    wav.fromScratch(1, SAMPLE_RATE, "8m", mulaw);
    wav.fromMuLaw();
    const samples = wav.getSamples() as unknown as Float64Array;
    let sum = 0;
    let crossings = 0;
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i]! / 32768;
      sum += s * s;
      if (i > 0 && samples[i - 1]! < 0 !== samples[i]! < 0) crossings++;
    }
    const rms = Math.sqrt(sum / samples.length);
    return {
      ...base,
      // Two crossings per cycle.
      frequencyHz: Math.round((crossings / 2) * (SAMPLE_RATE / samples.length)),
      levelDbfs: rms > 0 ? Math.round(20 * Math.log10(rms)) : -Infinity,
    };
  }
}
