//! The top menu: register, login (banner, failures), bad input, end of input.

mod util;

use util::{login, run_script, Client, TestServer, MENU, PW};

const BANNER_TOP: &str = "======================login user======================\n";
const FRIENDS: &str = "----------------------friend list---------------------\n";
const GROUPS: &str = "----------------------group list----------------------\n";
const BANNER_END: &str = "======================================================\n";

fn help_block() -> String {
    [
        "show command list >>>",
        "help : 显示所有支持的命令，格式help",
        "chat : 一对一聊天，格式chat:friendid:message",
        "addfriend : 添加好友，格式addfriend:friendid",
        "creategroup : 创建群组，格式creategroup:groupname:groupdesc",
        "addgroup : 加入群组，格式addgroup:groupid",
        "groupchat : 群聊，格式groupchat:groupid:message",
        "loginout : 注销，格式loginout",
        "quit : 注销并退出，格式quit",
        "",
    ]
    .join("\n")
}

#[test]
fn register_success_and_duplicate_name() {
    let server = TestServer::start();
    let run = run_script(&server, "2\nalice\npw\n2\n名字\npw\n2\nalice\nother\n3\n");
    assert!(run.status.success(), "{}", run.stderr);
    let expected = format!(
        "{MENU}username:userpassword:alice register success, userid is 1, do not forget it!\n\
         {MENU}username:userpassword:名字 register success, userid is 2, do not forget it!\n\
         {MENU}username:userpassword:alice is already exist, register error!\n\
         {MENU}"
    );
    assert_eq!(run.stdout, expected);
    assert_eq!(run.stderr, "");
}

#[test]
fn register_rejects_empty_fields() {
    let server = TestServer::start();
    let run = run_script(&server, "2\n\nbob\n\npw\n3\n");
    assert!(run.status.success());
    let expected = format!(
        "{MENU}username:the name must not be empty\nusername:userpassword:\
         the password must not be empty\nuserpassword:\
         bob register success, userid is 1, do not forget it!\n{MENU}"
    );
    assert_eq!(run.stdout, expected);
}

#[test]
fn login_banner_with_friends_groups_members_then_help() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let carol = server.register("carol");
    {
        let mut a = server.login(alice);
        a.add_friend(bob);
        a.add_friend(carol);
        let g = a.create_group("team", "the team: all of us");
        let mut c = server.login(carol);
        c.join_group(g);
    }
    // bob stays online while alice logs in.
    let _bob_online = server.login(bob);
    let run = run_script(&server, &login(alice));
    assert!(run.status.success(), "{}", run.stderr);
    let expected = format!(
        "{MENU}userid:userpassword:{BANNER_TOP}\
         current login user => id:{alice} name:alice\n\
         {FRIENDS}\
         {bob} bob online\n\
         {carol} carol offline\n\
         {GROUPS}\
         1 team the team: all of us\n\
         {alice} alice online creator\n\
         {carol} carol offline normal\n\
         {BANNER_END}{}",
        help_block()
    );
    assert_eq!(run.stdout, expected);
}

#[test]
fn login_banner_when_alone() {
    let server = TestServer::start();
    let id = server.register("solo");
    let run = run_script(&server, &login(id));
    assert_eq!(
        run.stdout,
        format!(
            "{MENU}userid:userpassword:{BANNER_TOP}current login user => id:{id} name:solo\n\
             {FRIENDS}{GROUPS}{BANNER_END}{}",
            help_block()
        )
    );
}

#[test]
fn wrong_password_and_unknown_id_show_the_menu_again() {
    let server = TestServer::start();
    let id = server.register("alice");
    let run = run_script(&server, &format!("1\n{id}\nnope\n1\n999\n{PW}\n3\n"));
    assert!(run.status.success());
    let expected = format!(
        "{MENU}userid:userpassword:id or password is invalid!\n\
         {MENU}userid:userpassword:id or password is invalid!\n{MENU}"
    );
    assert_eq!(run.stdout, expected);
}

#[test]
fn already_online_is_refused() {
    let server = TestServer::start();
    let id = server.register("alice");
    let _online = server.login(id);
    let run = run_script(&server, &format!("{}3\n", login(id)));
    assert!(run.status.success());
    let expected =
        format!("{MENU}userid:userpassword:this account is using, input another!\n{MENU}");
    assert_eq!(run.stdout, expected);
}

#[test]
fn bad_menu_input_reprompts_with_a_hint() {
    let server = TestServer::start();
    let id = server.register("alice");
    let run = run_script(
        &server,
        &format!("abc\n7\n\n1\nxyz\n-3\n{id}\n{PW}\nquit\n"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let expected_start = format!(
        "{MENU}invalid choice \"abc\", enter 1, 2 or 3\n\
         {MENU}invalid choice \"7\", enter 1, 2 or 3\n\
         {MENU}invalid choice \"\", enter 1, 2 or 3\n\
         {MENU}userid:invalid userid \"xyz\", enter a number\n\
         userid:invalid userid \"-3\", enter a number\n\
         userid:userpassword:{BANNER_TOP}"
    );
    assert!(
        run.stdout.starts_with(&expected_start),
        "got:\n{}",
        run.stdout
    );
}

#[test]
fn crlf_input_and_invalid_utf8_lines() {
    let server = TestServer::start();
    let id = server.register("alice");
    let mut c = Client::spawn(&server);
    // A line that is not UTF-8 is refused with a hint; CRLF line ends are fine.
    let mut input = b"\xff\xfe\n".to_vec();
    input.extend_from_slice(format!("1\r\n{id}\r\n{PW}\r\n").as_bytes());
    c.send_bytes(&input);
    c.wait_for("current login user");
    c.close_stdin();
    assert!(c.wait_exit().success());
    let out = c.stdout();
    assert!(
        out.contains("input is not valid UTF-8, try again\nchoice:userid:"),
        "{out}"
    );
}

#[test]
fn end_of_input_exits_zero_everywhere() {
    let server = TestServer::start();
    let id = server.register("alice");
    for script in [
        String::new(),
        "1\n".to_owned(),
        format!("1\n{id}\n"),
        "2\nbob\n".to_owned(),
        login(id),
    ] {
        let run = run_script(&server, &script);
        assert!(run.status.success(), "script {script:?}: {}", run.stderr);
        assert_eq!(run.stderr, "", "script {script:?}");
    }
    // The logged-in run logged out on its way: the user can log in again at once.
    let _again = server.login(id);
}

#[test]
fn quit_from_the_top_menu() {
    let server = TestServer::start();
    let mut c = Client::spawn(&server);
    c.wait_for("choice:");
    c.send("3\n");
    // stdin stays open: the client exits on its own.
    assert!(c.wait_exit().success());
    assert_eq!(c.stdout(), MENU);
}
