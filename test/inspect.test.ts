import { describe, expect, it } from 'vitest';
import { inspectRequest, operationFor } from '../src/meter/inspect.js';

describe('operation from method and path', () => {
  it.each([
    ['/v1/chat/completions', 'chat'],
    ['/api/v1/chat/completions', 'chat'],
    ['/v1/search/completions', 'chat'],
    ['/v1/completions', 'text_completion'],
    ['/v1/responses', 'responses'],
    ['/v1/messages', 'messages'],
    ['/v1/messages/count_tokens', 'other'],
    ['/v1/embeddings', 'embeddings'],
    ['/v1/images/generations', 'image_generation'],
    ['/v1/models', 'other'],
  ])('POST %s → %s', (path, op) => {
    expect(operationFor('POST', path)).toBe(op);
  });

  it('GET is never metered as a generation', () => {
    expect(operationFor('GET', '/v1/chat/completions')).toBe('other');
  });
});

describe('inspectRequest', () => {
  it('reads model, stream, user and include_usage', () => {
    const body = Buffer.from(
      JSON.stringify({
        model: 'deepseek-chat',
        stream: true,
        user: 'u1',
        stream_options: { include_usage: true },
      }),
    );
    const info = inspectRequest('POST', '/v1/chat/completions', body);
    expect(info).toMatchObject({
      operation: 'chat',
      model: 'deepseek-chat',
      stream: true,
      user: 'u1',
      asksForUsage: true,
    });
  });

  it('takes Anthropic metadata.user_id', () => {
    const body = Buffer.from(JSON.stringify({ model: 'claude-x', metadata: { user_id: 'u2' } }));
    expect(inspectRequest('POST', '/v1/messages', body).user).toBe('u2');
  });

  it('survives a non-JSON body', () => {
    const info = inspectRequest('POST', '/v1/chat/completions', Buffer.from('not json'));
    expect(info).toMatchObject({ operation: 'chat', stream: false, asksForUsage: false });
    expect(info.model).toBeUndefined();
  });
});
