"""vLLM's ``/tokenize`` and ``/detokenize``: a prompt or a chat (rendered with the leased version's
template, tools included) to token ids, and ids back to text."""

from __future__ import annotations

from adapterhub.errors import UserInputError
from adapterhub.serving.endpoints.generation import (
    GeneratingService,
    refuse_unsupported,
    template_messages_of,
)
from adapterhub.serving.endpoints.tokenize.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from adapterhub.tools import template_messages


class TokenizeService(GeneratingService):
    endpoint = "tokenize"

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        refuse_unsupported(req)
        for i, m in enumerate(req.messages or []):
            if m.images():
                raise UserInputError("/tokenize does not take images", param=f"messages[{i}].content")
        lease = await self.manager.acquire(req.model)
        try:
            if req.messages is not None:
                tools = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
                template = self.chat_template(req.model, req.messages, bool(tools), lease)
                ids = self.engine.encode_chat(template_messages(template_messages_of(req.messages)), template,
                                              add_generation_prompt=req.add_generation_prompt, tools=tools)
            else:
                ids = self.engine.encode(req.prompt or "", add_special_tokens=req.add_special_tokens)
        finally:
            self.manager.release(lease)
        strs = self.engine.token_texts(ids) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.engine.capabilities.context_length, tokens=ids,
                                token_strs=strs)

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        refuse_unsupported(req)
        self.manager.resolve(req.model)  # an unknown model is a 404, as everywhere
        self.check_ids(req.tokens, "tokens")
        return DetokenizeResponse(prompt=self.engine.decode(req.tokens))
