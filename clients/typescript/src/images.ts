/** The photo a caller hands over, in any of the forms a browser or Node has it. */

/** A photo: a File or Blob, bytes (a Node Buffer is a Uint8Array), or a data: URL / base64 string. */
export type ImageInput = Blob | Uint8Array | ArrayBuffer | string;

/** The image types the API accepts, by their first bytes. */
const SIGNATURES: [string, (b: Uint8Array) => boolean][] = [
  ["image/jpeg", (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff],
  ["image/png", (b) => b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47],
  ["image/webp", (b) => ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 12) === "WEBP"],
];

function ascii(bytes: Uint8Array, start: number, end: number): string {
  return String.fromCharCode(...bytes.subarray(start, end));
}

export function isImage(input: unknown): input is ImageInput {
  return typeof input === "string" || input instanceof Blob || input instanceof Uint8Array
    || input instanceof ArrayBuffer;
}

/** The image's size in bytes (of the decoded bytes, for base64). */
export function byteSize(image: ImageInput): number {
  if (typeof image === "string") return Math.floor((image.length - image.indexOf(",") - 1) * 3 / 4);
  return image instanceof Blob ? image.size : image.byteLength;
}

/** The image as a Blob typed by its content (base64 and data: URLs decoded). */
export async function toBlob(image: ImageInput): Promise<Blob> {
  let bytes: Uint8Array;
  if (image instanceof Blob) {
    bytes = new Uint8Array(await image.slice(0, 12).arrayBuffer());
  } else if (typeof image === "string") {
    const text = atob(image.slice(image.indexOf(",") + 1).replace(/\s/g, "").replace(/-/g, "+").replace(/_/g, "/"));
    bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
  } else {
    bytes = image instanceof Uint8Array ? image : new Uint8Array(image);
  }
  const type = SIGNATURES.find(([, matches]) => matches(bytes))?.[0] ?? "";
  if (image instanceof Blob) return type && image.type !== type ? new Blob([image], { type }) : image;
  return new Blob([bytes as Uint8Array<ArrayBuffer>], { type });
}
