import unhomoglyph from "unhomoglyph";

/**
 * The UTS #39 confusable skeleton after NFKC and case folding: two names with equal skeletons look
 * alike ("paypa1" and "paypal", "rn" and "m", Cyrillic "а" and Latin "a"). unhomoglyph maps by
 * Unicode's confusables.txt; it maps to prototypes that may be upper case ("0" -> "O"), so the
 * result is folded and mapped once more to reach a fixed point.
 */
export function skeleton(name: string): string {
  const folded = name.normalize("NFKC").toLowerCase();
  return unhomoglyph(unhomoglyph(folded).toLowerCase()).toLowerCase();
}

/**
 * The looser key reserved names are compared with: the skeleton without accents (combining marks)
 * or separators, and "i" taken for "l" (they differ in confusables.txt, but "adm1n" is read as
 * "admin"). Looser than skeleton() on purpose: refusing a few more names near a staff role costs
 * little.
 */
export function reservedKey(name: string): string {
  return skeleton(name)
    .normalize("NFD")
    .replace(/\p{M}/gu, "")
    .replace(/[\s._\-·]+/gu, "")
    .replaceAll("i", "l");
}

/** Compares names against a list of reserved ones. */
export class ReservedNames {
  private readonly keys: Map<string, string>;

  constructor(names: readonly string[]) {
    this.keys = new Map(names.map((n) => [reservedKey(n), n]));
  }

  /** The reserved name `name` looks like, or undefined. */
  match(name: string): string | undefined {
    return this.keys.get(reservedKey(name));
  }
}

/**
 * Within the username alphabet [a-z0-9_.] the confusable classes are {l, 1}, {o, 0} and {m, rn}
 * (computed from confusables.txt: no other character or pair of characters of the alphabet shares
 * a skeleton with another). Every registered username that looks like `name` is therefore one of
 * these variants, which lets the accounts service find a look-alike with plain lookups by name,
 * without an index by skeleton.
 */
const SWAPS: ReadonlyArray<readonly [string, string]> = [
  ["l", "1"],
  ["1", "l"],
  ["o", "0"],
  ["0", "o"],
  ["m", "rn"],
  ["rn", "m"],
];

/**
 * Usernames of the [a-z0-9_.] alphabet that share `name`'s skeleton, `name` itself left out,
 * fewest substitutions first, at most `max`. A name with many ambiguous characters has 2^k
 * variants; the cap bounds the lookups one registration costs, and the variants left out are those
 * that differ from `name` the most.
 */
export function lookAlikes(name: string, max: number): string[] {
  const seen = new Set<string>([name]);
  const out: string[] = [];
  let frontier = [name];
  while (frontier.length > 0 && out.length < max) {
    const next: string[] = [];
    for (const current of frontier) {
      for (let i = 0; i < current.length; i++) {
        for (const [from, to] of SWAPS) {
          if (!current.startsWith(from, i)) continue;
          const variant = current.slice(0, i) + to + current.slice(i + from.length);
          if (variant.length > 32 || seen.has(variant)) continue;
          seen.add(variant);
          next.push(variant);
          out.push(variant);
          if (out.length >= max) return out;
        }
      }
    }
    frontier = next;
  }
  return out;
}
