//! Chat templates: the model's own `tokenizer.chat_template` (Jinja, as written for
//! Hugging Face transformers) rendered with minijinja, as mistral.rs and TGI do, with
//! Python string methods from minijinja-contrib's pycompat (templates call `.strip()`,
//! `.startswith()`, ...), `raise_exception`, and the model's BOS/EOS token texts.

use std::collections::BTreeMap;

use minijinja::{Environment, Value};

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        msg,
    ))
}

impl ChatTemplate {
    /// Compile a template; `bos`/`eos` are the token texts the template may insert.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::InvalidArgument(format!("chat template does not compile: {e}")))?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// The template of a GGUF model, if it has one.
    pub fn from_gguf(file: &GgufFile, tok: &Tokenizer) -> Result<Option<Self>> {
        let Some(src) = file
            .header()
            .opt_str("tokenizer.chat_template")
            .map_err(|e| file.err(e))?
        else {
            return Ok(None);
        };
        let text = |id: Option<u32>| id.and_then(|t| tok.token_text(t)).unwrap_or("").to_string();
        Self::new(src, &text(tok.bos), &text(tok.eos)).map(Some)
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn apply(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role", Value::from(m.role.as_str()));
                map.insert("content", Value::from(m.content.as_str()));
                Value::from(map)
            })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::InvalidArgument(format!("chat template: {e}")))?;
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| Error::InvalidArgument(format!("chat template rendering failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let s = t.apply(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip().upper() }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.apply(&[Message::new("user", "  hi ")], false).unwrap(),
            "<s>HI"
        );
        let e = t.apply(&[Message::new("system", "x")], false).unwrap_err();
        assert!(e.to_string().contains("first must be user"), "{e}");
    }

    #[test]
    fn broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for x in %}", "", "").is_err());
    }
}
