/** Who the admin listener answers (admin-guard.ts), request by request: origins, host names, the token. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkAdminRequest, tokenMatches, type AdminRequest } from '../src/http/admin-guard.ts';

const req = (method: string, url: string, headers: AdminRequest['headers'] = {}): AdminRequest => ({ method, url, headers: { host: '127.0.0.1:8081', ...headers } });
const status = (r: AdminRequest, token = ''): number => checkAdminRequest(r, token)?.status ?? 200;

test('without a token: IP literals and localhost are answered, other host names refused (DNS rebinding)', () => {
  assert.equal(status(req('GET', '/api/v1/sessions')), 200);
  assert.equal(status(req('DELETE', '/api/v1/sessions/x', { host: 'localhost:8081' })), 200);
  assert.equal(status(req('GET', '/api/v1/sessions', { host: '[::1]:8081' })), 200);
  assert.equal(status(req('GET', '/api/v1/sessions', { host: '10.0.0.5' })), 200);
  assert.equal(status(req('GET', '/api/v1/sessions', { host: 'attacker.example:8081' })), 403);
  assert.equal(status(req('GET', '/', { host: 'localhost.attacker.example:8081' })), 403);
  assert.equal(status(req('GET', '/api/v1/sessions', { host: undefined })), 403);
});

test('an Origin other than the listener\'s own is refused, with or without a token; its own (http or https) is fine', () => {
  assert.equal(status(req('OPTIONS', '/api/v1/sessions/x', { origin: 'http://evil.example' })), 403);
  assert.equal(status(req('GET', '/api/v1/sessions', { origin: 'http://evil.example', authorization: 'Bearer t' }), 't'), 403);
  assert.equal(status(req('POST', '/api/v1/drain', { origin: 'null' })), 403);
  assert.equal(status(req('POST', '/api/v1/drain', { origin: 'http://127.0.0.1:8081' })), 200);
  assert.equal(status(req('POST', '/api/v1/drain', { origin: 'https://127.0.0.1:8081' })), 200);
  assert.equal(status(req('POST', '/api/v1/drain', { origin: 'http://127.0.0.1:8082' })), 403);
  // A rebinding page's Origin matches its Host; without a token the host name is what gives it away.
  assert.equal(status(req('POST', '/api/v1/drain', { host: 'evil.example:8081', origin: 'http://evil.example:8081' })), 403);
});

test('with a token: every API request carries it; the page, its assets and the probes load without', () => {
  const t = 's3cret';
  assert.equal(status(req('GET', '/api/v1/sessions'), t), 401);
  assert.equal(status(req('GET', '/metrics'), t), 401);
  assert.equal(status(req('GET', '/api/v1/sessions', { authorization: 'Bearer s3cret' }), t), 200);
  assert.equal(status(req('GET', '/api/v1/sessions', { authorization: 'bearer s3cret' }), t), 200);
  assert.equal(status(req('GET', '/api/v1/sessions', { authorization: 'Bearer s3cre' }), t), 401);
  assert.equal(status(req('GET', '/api/v1/sessions', { authorization: 'Basic czNjcmV0' }), t), 401);
  assert.equal(status(req('GET', '/api/v1/sessions', { authorization: 'Bearer s3cret', host: 'admin.example.com' }), t), 200, 'a named host is fine when a token is required');
  // ?access_token= is for GETs (EventSource), not for changes.
  assert.equal(status(req('GET', '/api/v1/dashboard/events?access_token=s3cret'), t), 200);
  assert.equal(status(req('DELETE', '/api/v1/sessions/x?access_token=s3cret'), t), 401);
  assert.equal(status(req('POST', '/api/v1/drain?access_token=s3cret'), t), 401);
  // A header, when present, is what counts (a wrong header is not rescued by the query).
  assert.equal(status(req('GET', '/api/v1/sessions?access_token=s3cret', { authorization: 'Bearer nope' }), t), 401);
  for (const path of ['/', '/dashboard/app.js', '/dashboard/vendor/hls.js', '/healthz', '/readyz']) {
    assert.equal(status(req('GET', path), t), 200, path);
    assert.equal(status(req('HEAD', path), t), 200, path);
  }
  assert.equal(status(req('POST', '/'), t), 401);
});

test('token comparison: equal only for the same string, whatever the lengths', () => {
  assert.equal(tokenMatches('abc', 'abc'), true);
  assert.equal(tokenMatches('abc', 'abcd'), false);
  assert.equal(tokenMatches('abc', ''), false);
  assert.equal(tokenMatches('abc', undefined), false);
});
