import { launchBrowser } from '/work/main/tests/src/harness/browser.ts';
const b = await launchBrowser();
const p = await b.newPage();
await p.goto('about:blank');
console.log(await p.evaluate(() => ({ ua: navigator.userAgent, h264: MediaSource.isTypeSupported('video/mp4; codecs="avc1.42E01E,mp4a.40.2"'), mms: 'ManagedMediaSource' in window })));
await b.close();
