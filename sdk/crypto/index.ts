// The SDK's Signal protocol layer: stores in the profile, key generation for the key directory,
// pairwise and group encryption, safety numbers and attachment encryption.
export {
  ATTACHMENT_OVERHEAD,
  AttachmentError,
  type AttachmentFailure,
  type AttachmentSecrets,
  decryptAttachment,
  decryptAttachmentFile,
  encryptAttachment,
  encryptAttachmentFile,
} from "./attachments.js";
export {
  decryptAvatar,
  encryptAvatar,
  MAX_AVATAR_BYTES,
  MAX_AVATAR_CIPHERTEXT_BYTES,
  newProfileKey,
  PROFILE_KEY_BYTES,
} from "./avatars.js";
export { GroupCipher, GroupDecryptError, type OwnSenderKey } from "./groups.js";
export {
  DEFAULT_PREKEY_TARGETS,
  generateInitialKeys,
  generateLastResortKyberPrekey,
  generateOneTimePrekeys,
  generateSignedPrekey,
  MAX_EC_PREKEYS_PER_UPLOAD,
  MAX_KYBER_PREKEYS_PER_UPLOAD,
  type PrekeyTargets,
  type RemainingPrekeys,
  replenishPrekeys,
  rotateSignedPrekeys,
  signedPrekeyNeedsRotation,
} from "./keys.js";
export {
  type BundleFetcher,
  DecryptError,
  type DecryptFailure,
  type DeviceCiphertext,
  DevicesWithoutKeysError,
  PairwiseCipher,
  PairwiseMessageType,
  toNativeBundle,
} from "./pairwise.js";
export {
  compareScannable,
  SAFETY_NUMBER_ITERATIONS,
  SAFETY_NUMBER_VERSION,
  type SafetyNumber,
  type SafetyParty,
  safetyNumber,
  safetyNumbersMatch,
} from "./safety.js";
export {
  addressOf,
  type DeviceRef,
  deviceOf,
  type IdentityChangeEvent,
  type IdentityChangeOutcome,
  IdentityStore,
  type RememberedIdentity,
  SIGNAL_DEVICE_NUMBER,
  SignalStores,
  type SignalStoresOptions,
  UntrustedIdentityError,
} from "./stores.js";
