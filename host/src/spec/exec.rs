//! The process of a command exec'd into a running container (ExecSync,
//! Exec): the container's own process (user, env, cwd, capabilities,
//! rlimits) with the command's arguments and no terminal.

use oci_spec::runtime::Process;

use super::SpecError;

/// `container`'s process running `cmd` instead.
pub fn exec_process(container: &Process, cmd: &[String]) -> Result<Process, SpecError> {
    match cmd.first() {
        None => return Err(SpecError::invalid("cmd", "is empty")),
        Some(program) if program.is_empty() => {
            return Err(SpecError::invalid(
                "cmd[0]",
                "the program is an empty string",
            ))
        }
        Some(_) => {}
    }
    let mut process = container.clone();
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(false));
    process.set_console_size(None);
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, UserBuilder};

    fn container() -> Process {
        ProcessBuilder::default()
            .args(vec!["nginx".to_string()])
            .env(vec!["PATH=/bin".to_string(), "A=1".to_string()])
            .cwd("/srv")
            .user(
                UserBuilder::default()
                    .uid(101u32)
                    .gid(101u32)
                    .build()
                    .unwrap(),
            )
            .terminal(true)
            .build()
            .unwrap()
    }

    #[test]
    fn an_exec_keeps_the_containers_settings_but_runs_the_command() {
        let cmd = vec!["ls".to_string(), "-l".to_string()];
        let exec = exec_process(&container(), &cmd).unwrap();
        assert_eq!(exec.args().as_deref(), Some(&cmd[..]));
        assert_eq!(exec.terminal(), Some(false));
        assert_eq!(exec.env(), container().env());
        assert_eq!(exec.cwd(), container().cwd());
        assert_eq!(exec.user(), container().user());
    }

    #[test]
    fn an_empty_command_is_refused_naming_the_field() {
        let error = exec_process(&container(), &[]).unwrap_err();
        assert_eq!(error.to_string(), "cmd: is empty");
        let error = exec_process(&container(), &[String::new()]).unwrap_err();
        assert_eq!(error.to_string(), "cmd[0]: the program is an empty string");
    }
}
