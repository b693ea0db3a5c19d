// SVG files are bundled as their markup (the LabIcon takes a string).
declare module '*.svg' {
  const markup: string;
  export default markup;
}
