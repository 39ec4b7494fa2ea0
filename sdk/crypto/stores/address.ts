import { ProtocolAddress } from "@signalapp/libsignal-client";
import type { DeviceRef } from "./types.js";

/**
 * The libsignal device number of every address. libsignal wants a number from 1 to 127 per
 * device, our device ids are strings ("dv_..."), and a user may have more devices over time than
 * 127. So each of our devices is its own libsignal "name" (`<userId>.<deviceId>`, see addressOf)
 * with device number 1: sessions, identities and sender keys are then kept per device exactly as
 * libsignal keeps them per address, and no numbering table has to be kept in sync across devices.
 */
export const SIGNAL_DEVICE_NUMBER = 1;

/** The libsignal address of one of our devices: name `<userId>.<deviceId>`, device number 1. */
export function addressOf(device: DeviceRef): ProtocolAddress {
  if (device.userId.includes(".") || device.userId === "" || device.deviceId === "") {
    throw new Error(`cannot address device ${device.deviceId} of user ${device.userId}`);
  }
  return ProtocolAddress.new(`${device.userId}.${device.deviceId}`, SIGNAL_DEVICE_NUMBER);
}

/** The device a libsignal address stands for (the inverse of addressOf). */
export function deviceOf(address: ProtocolAddress): DeviceRef {
  const name = address.name();
  const dot = name.indexOf(".");
  if (dot <= 0 || dot === name.length - 1) throw new Error(`not a Switchboard address: ${name}`);
  return { userId: name.slice(0, dot), deviceId: name.slice(dot + 1) };
}
